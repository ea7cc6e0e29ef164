/* chatrelay web chat page.
 *
 * Plain ES2020, no build step, no dependencies: it must run in WeChat's in-app browser and
 * under a strict CSP (no eval, no inline handlers or styles). Model and user text is only
 * ever inserted as text, or as HTML that this file escaped first.
 *
 * Sections: i18n · utilities · markdown + highlighter · SSE · API · state/storage ·
 * login · chat · account · buy · panels · boot.
 */
(function () {
  'use strict';

  // ---------------------------------------------------------------- i18n

  /** Every UI string, by language. `{name}` placeholders are filled by t(). */
  const I18N = {
    zh: {
      htmlLang: 'zh-CN',
      langName: '中文',
      switchTo: '切换到中文',
      loading: '加载中…',
      loadFailed: '加载失败，请检查网络后重试。',
      retry: '重试',
      loginHow: '关注公众号「{mp}」，发送「{kw}」获取验证码',
      loginHowNoName: '向公众号发送「{kw}」获取验证码',
      loginQrAlt: '公众号二维码',
      loginQrHintWx: '长按识别二维码，关注公众号',
      loginQrHint: '用微信扫码关注公众号',
      codeLabel: '验证码',
      codePlaceholder: '如 K7QM-2XRT',
      login: '登录',
      codeInvalid: '请输入 8 位验证码（字母或数字）',
      badCode: '验证码错误或已过期',
      throttled: '尝试次数过多，请稍后再试',
      or: '或',
      guestStart: '直接试用',
      guestHint: '无需登录，赠送少量免费额度。',
      guestOff: '暂未开放试用',
      guestThrottled: '试用次数过多，请稍后再试',
      loginUnconfigured: '网站还没有配置登录方式。如果管理员给了你 API Key，请在下方粘贴使用。',
      tokenToggle: '使用 API Key 登录',
      tokenLabel: 'API Key',
      tokenPlaceholder: 'sk-…',
      tokenSubmit: '使用',
      tokenEmpty: '请粘贴 API Key',
      tokenInvalid: 'API Key 无效或已过期',
      expired: '登录已过期，请重新登录',
      loggedOut: '已退出登录',
      networkError: '网络错误，请检查网络后重试',
      serverError: '服务暂时不可用，请稍后再试',
      convHeading: '历史对话',
      convEmpty: '还没有对话',
      newChat: '新对话',
      deleteConv: '删除对话「{title}」',
      deleted: '已删除对话',
      undo: '撤销',
      menu: '打开对话列表',
      closeMenu: '关闭对话列表',
      model: '模型',
      available: '可用',
      buy: '购买',
      buyCredits: '购买额度',
      account: '账户',
      logout: '退出登录',
      messagesLabel: '对话内容',
      inputLabel: '输入消息',
      inputPlaceholder: '输入消息…',
      inputHint: '按 Enter 发送，Shift+Enter 换行',
      send: '发送',
      stop: '停止生成',
      stopped: '已停止',
      you: '你',
      assistant: '助手',
      answering: '正在回答…',
      answerDone: '回答完成',
      answerStopped: '已停止回答',
      answerFailed: '回答失败',
      regenerate: '重新生成',
      copy: '复制',
      copied: '已复制',
      copyFailed: '复制失败',
      welcome: '有什么可以帮你？',
      welcomeSub: '直接输入问题即可开始对话。',
      suggestions: ['用简单的话解释什么是量子计算', '帮我写一封请假邮件', '推荐几本适合入门的编程书', '写一个 Python 函数判断素数'],
      errQuota: '额度不足',
      errRate: '请求太频繁，请稍后再试',
      errUpstream: '模型服务出错了，请稍后重试',
      errModel: '所选模型不可用，请换一个模型',
      errUnavailable: '服务暂时不可用，请稍后再试',
      errBanned: '账号已被停用',
      errInterrupted: '回答中断了，请重试',
      errGeneric: '出错了：{msg}',
      close: '关闭',
      accountTitle: '我的账户',
      userLine: '{name} · ID {uid}',
      freeToday: '今日免费',
      paid: '付费',
      held: '处理中占用 {n}',
      usageTitle: '最近记录',
      redeemTitle: '兑换码',
      redeem: '兑换',
      redeemOk: '兑换成功：增加 {n} 额度，当前可用 {available}',
      usageEmpty: '暂无记录',
      kind_usage: '使用',
      kind_grant: '赠送',
      kind_purchase: '购买',
      kind_refund: '退款',
      kind_adjust: '调整',
      deltaFree: '免费 {n}',
      deltaPaid: '付费 {n}',
      deltaPlan: '会员 {n}',
      answersTitle: '用量明细',
      answersEmpty: '还没有用量',
      answersMore: '加载更多',
      answerCredits: '{n} 额度',
      answerTokens: '输入 {p} · 输出 {c} tokens',
      outcome_answered: '',
      outcome_cut: '已截断',
      outcome_stopped: '已停止',
      outcome_refunded: '已退还 {n}',
      buyTitle: '购买额度',
      chooseProduct: '选择额度包',
      choosePay: '支付方式',
      credits: '{n} 额度',
      planProduct: '会员 {days} 天 · 每天 {daily} 额度',
      planTitle: '会员',
      planLine: '{name} · 每天额外 {daily} 额度',
      planUntil: '有效期至 {end}（剩 {days} 天）',
      planEnded: '已于 {end} 到期',
      redeemPlanOk: '兑换成功：{name}有效期至 {end}',
      orderPlan: '支付成功，{name}已生效，有效期至 {end}',
      ch_wechat: '微信支付',
      ch_alipay: '支付宝',
      productsFailed: '商品加载失败：{msg}',
      noProducts: '暂时没有可购买的额度包',
      orderCreating: '正在生成付款码…',
      orderWaiting: '等待支付 {price}',
      orderExpiresIn: '{time} 后过期',
      orderCredited: '支付成功，已到账 {n} 额度',
      orderClosed: '付款码已过期，请重新生成',
      orderTimeUp: '付款码已过期',
      orderRefunded: '订单已退款',
      orderRenew: '重新生成付款码',
      orderFailed: '生成付款码失败：{msg}',
      qrAlt: '付款二维码，金额 {price}',
      qrFailed: '二维码加载失败',
      hintWechatInApp: '长按上方二维码，选择「识别图中二维码」完成支付',
      hintWechat: '请使用微信「扫一扫」扫码支付',
      hintAlipay: '请使用支付宝「扫一扫」扫码支付',
      openAlipay: '打开支付宝付款',
      pickChannel: '请选择支付方式',
      // WeChat login (web authorization) and scan login
      wxLogin: '微信一键登录',
      wxLoginHint: '使用当前微信登录，无需验证码',
      orCode: '或使用验证码登录',
      wxRedirecting: '正在通过微信登录…',
      loggingIn: '正在登录…',
      handoffExpired: '登录链接已失效，请重新登录',
      handoffFailed: '登录没有完成：{msg}',
      scanLogin: '微信扫码登录',
      codeLogin: '验证码登录',
      scanCreating: '正在生成二维码…',
      scanWaiting: '请使用微信扫一扫登录',
      scanWaitingSub: '在手机上完成登录后，本页会自动进入',
      scanExpired: '二维码已过期',
      scanExpiredSub: '请点击刷新，重新获取二维码',
      scanRefresh: '刷新二维码',
      scanDone: '登录成功',
      scanFailed: '二维码生成失败：{msg}',
      scanQrAlt: '微信扫码登录二维码',
      // Payments by method
      alipayInWechat: '请点击右上角 ··· 选择「在浏览器打开」后使用支付宝',
      payTotal: '应付 {price}',
      payNow: '立即支付 {price}',
      payAgain: '继续支付',
      hintJsapi: '将打开微信支付完成付款',
      hintH5: '将跳转到微信支付，付款后自动返回本页',
      hintWap: '将跳转到支付宝，付款后自动返回本页',
      orderOpening: '正在打开微信支付…',
      orderLeaving: '正在前往{channel}…',
      orderConfirming: '正在确认支付结果…',
      orderChecking: '正在查询订单…',
      orderNotFound: '没有找到这笔订单',
      payCancelled: '已取消支付。未支付的订单到期后会自动关闭。',
      payFailed: '支付没有完成（{msg}）。未支付的订单到期后会自动关闭。',
      payNeedsWechat: '需要先通过微信授权，正在跳转…',
      payNoMethod: '当前浏览器无法使用此支付方式',
      payStartFailed: '下单失败：{msg}',
    },
    en: {
      htmlLang: 'en',
      langName: 'English',
      switchTo: 'Switch to English',
      loading: 'Loading…',
      loadFailed: 'Could not load. Check your connection and try again.',
      retry: 'Retry',
      loginHow: 'Follow the Official Account “{mp}” and send “{kw}” to get a login code',
      loginHowNoName: 'Send “{kw}” to our Official Account to get a login code',
      loginQrAlt: 'Official Account QR code',
      loginQrHintWx: 'Long-press the QR code to follow',
      loginQrHint: 'Scan with WeChat to follow',
      codeLabel: 'Login code',
      codePlaceholder: 'e.g. K7QM-2XRT',
      login: 'Log in',
      codeInvalid: 'Enter the 8-character code',
      badCode: 'The code is wrong or has expired',
      throttled: 'Too many attempts, please try again later',
      or: 'or',
      guestStart: 'Try it now',
      guestHint: 'No login needed; comes with a few free credits.',
      guestOff: 'Trying without login is not available',
      guestThrottled: 'Too many trials from here, please try again later',
      loginUnconfigured: 'Login is not configured on this site yet. If an administrator gave you an API key, paste it below.',
      tokenToggle: 'Log in with an API key',
      tokenLabel: 'API key',
      tokenPlaceholder: 'sk-…',
      tokenSubmit: 'Use key',
      tokenEmpty: 'Paste your API key',
      tokenInvalid: 'The API key is invalid or has expired',
      expired: 'Your session has expired, please log in again',
      loggedOut: 'You have logged out',
      networkError: 'Network error, check your connection and try again',
      serverError: 'The service is temporarily unavailable, please try again later',
      convHeading: 'Conversations',
      convEmpty: 'No conversations yet',
      newChat: 'New chat',
      deleteConv: 'Delete conversation “{title}”',
      deleted: 'Conversation deleted',
      undo: 'Undo',
      menu: 'Open conversations',
      closeMenu: 'Close conversations',
      model: 'Model',
      available: 'Credits',
      buy: 'Buy',
      buyCredits: 'Buy credits',
      account: 'Account',
      logout: 'Log out',
      messagesLabel: 'Conversation',
      inputLabel: 'Message',
      inputPlaceholder: 'Type a message…',
      inputHint: 'Enter sends, Shift+Enter adds a line',
      send: 'Send',
      stop: 'Stop generating',
      stopped: 'Stopped',
      you: 'You',
      assistant: 'Assistant',
      answering: 'Answering…',
      answerDone: 'Answer complete',
      answerStopped: 'Answer stopped',
      answerFailed: 'Answer failed',
      regenerate: 'Regenerate',
      copy: 'Copy',
      copied: 'Copied',
      copyFailed: 'Copy failed',
      welcome: 'How can I help?',
      welcomeSub: 'Type a question to start.',
      suggestions: ['Explain quantum computing in simple terms', 'Write a short leave-request email', 'Recommend a few beginner programming books', 'Write a Python function that tests for primes'],
      errQuota: 'Not enough credits',
      errRate: 'Too many requests, please slow down',
      errUpstream: 'The model service failed, please try again',
      errModel: 'The selected model is unavailable, please choose another',
      errUnavailable: 'The service is temporarily unavailable, please try again later',
      errBanned: 'This account has been deactivated',
      errInterrupted: 'The answer was interrupted, please retry',
      errGeneric: 'Something went wrong: {msg}',
      close: 'Close',
      accountTitle: 'My account',
      userLine: '{name} · ID {uid}',
      freeToday: 'Free today',
      paid: 'Paid',
      held: '{n} held by answers in progress',
      usageTitle: 'Recent activity',
      redeemTitle: 'Redemption code',
      redeem: 'Redeem',
      redeemOk: 'Redeemed: {n} credits added, {available} available',
      usageEmpty: 'Nothing yet',
      kind_usage: 'Used',
      kind_grant: 'Granted',
      kind_purchase: 'Purchase',
      kind_refund: 'Refund',
      kind_adjust: 'Adjustment',
      deltaFree: 'free {n}',
      deltaPaid: 'paid {n}',
      deltaPlan: 'plan {n}',
      answersTitle: 'Usage',
      answersEmpty: 'No answers yet',
      answersMore: 'Load more',
      answerCredits: '{n} credits',
      answerTokens: 'in {p} · out {c} tokens',
      outcome_answered: '',
      outcome_cut: 'cut',
      outcome_stopped: 'stopped',
      outcome_refunded: '{n} refunded',
      buyTitle: 'Buy credits',
      chooseProduct: 'Choose a pack',
      choosePay: 'Payment method',
      credits: '{n} credits',
      planProduct: 'Membership {days} days · {daily} credits a day',
      planTitle: 'Membership',
      planLine: '{name} · {daily} extra credits a day',
      planUntil: 'Valid until {end} ({days} days left)',
      planEnded: 'Ended on {end}',
      redeemPlanOk: 'Redeemed: {name} valid until {end}',
      orderPlan: 'Payment received: {name} valid until {end}',
      ch_wechat: 'WeChat Pay',
      ch_alipay: 'Alipay',
      productsFailed: 'Could not load the packs: {msg}',
      noProducts: 'No credit packs are on sale right now',
      orderCreating: 'Creating the payment code…',
      orderWaiting: 'Waiting for payment of {price}',
      orderExpiresIn: 'Expires in {time}',
      orderCredited: 'Payment received: {n} credits added',
      orderClosed: 'The payment code has expired, please create a new one',
      orderTimeUp: 'The payment code has expired',
      orderRefunded: 'The order was refunded',
      orderRenew: 'New payment code',
      orderFailed: 'Could not create the payment code: {msg}',
      qrAlt: 'Payment QR code for {price}',
      qrFailed: 'The QR code could not be loaded',
      hintWechatInApp: 'Long-press the QR code and choose “Scan QR code in image” to pay',
      hintWechat: 'Scan with WeChat to pay',
      hintAlipay: 'Scan with Alipay to pay',
      openAlipay: 'Open Alipay to pay',
      pickChannel: 'Choose a payment method',
      // WeChat login (web authorization) and scan login
      wxLogin: 'Log in with WeChat',
      wxLoginHint: 'Uses this WeChat account; no code needed',
      orCode: 'or log in with a code',
      wxRedirecting: 'Logging in with WeChat…',
      loggingIn: 'Logging in…',
      handoffExpired: 'This login link has expired, please log in again',
      handoffFailed: 'The login did not complete: {msg}',
      scanLogin: 'Scan with WeChat',
      codeLogin: 'Login code',
      scanCreating: 'Creating the QR code…',
      scanWaiting: 'Scan with WeChat to log in',
      scanWaitingSub: 'Finish on your phone; this page continues by itself',
      scanExpired: 'The QR code has expired',
      scanExpiredSub: 'Refresh to get a new QR code',
      scanRefresh: 'Refresh',
      scanDone: 'Logged in',
      scanFailed: 'Could not create the QR code: {msg}',
      scanQrAlt: 'QR code to log in with WeChat',
      // Payments by method
      alipayInWechat: 'To pay with Alipay, tap ··· in the top right corner and choose “Open in Browser”',
      payTotal: 'Total {price}',
      payNow: 'Pay {price}',
      payAgain: 'Continue to pay',
      hintJsapi: 'WeChat Pay opens to complete the payment',
      hintH5: 'You go to WeChat Pay and come back here after paying',
      hintWap: 'You go to Alipay and come back here after paying',
      orderOpening: 'Opening WeChat Pay…',
      orderLeaving: 'Going to {channel}…',
      orderConfirming: 'Confirming the payment…',
      orderChecking: 'Looking up the order…',
      orderNotFound: 'This order was not found',
      payCancelled: 'Payment cancelled. The unpaid order closes by itself when it expires.',
      payFailed: 'The payment did not complete ({msg}). The unpaid order closes by itself when it expires.',
      payNeedsWechat: 'WeChat authorization is needed first, redirecting…',
      payNoMethod: 'This payment method is not available in this browser',
      payStartFailed: 'Could not start the payment: {msg}',
    },
  };

  const LANG_KEY = 'chatrelay.lang';
  let lang = readStore(LANG_KEY) === 'en' ? 'en' : 'zh';

  /** The UI string `key` in the current language, with `{name}` filled from `params`. */
  function t(key, params) {
    const s = I18N[lang][key] ?? I18N.zh[key] ?? key;
    if (!params || typeof s !== 'string') return s;
    return s.replace(/\{(\w+)\}/g, (m, k) => (k in params ? String(params[k]) : m));
  }

  // ---------------------------------------------------------------- utilities

  const $ = (id) => document.getElementById(id);

  /** localStorage that never throws (private mode, disabled storage, quota). */
  function readStore(key) {
    try { return window.localStorage.getItem(key); } catch (_) { return null; }
  }
  function writeStore(key, value) {
    try {
      if (value === null || value === undefined) window.localStorage.removeItem(key);
      else window.localStorage.setItem(key, value);
      return true;
    } catch (_) { return false; }
  }

  /** Creates an element; attributes are set as attributes, children as text or nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  /** Escapes text for use in HTML text and in double-quoted attributes. */
  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  /** ¥ with two decimals, from integer fen (no floating point on money). */
  function formatPrice(fen) {
    const n = Math.max(0, Math.trunc(Number(fen) || 0));
    return '¥' + Math.floor(n / 100) + '.' + String(n % 100).padStart(2, '0');
  }

  function pad2(n) { return String(n).padStart(2, '0'); }

  function formatTime(unixSecs) {
    const d = new Date(unixSecs * 1000);
    const now = new Date();
    const hm = pad2(d.getHours()) + ':' + pad2(d.getMinutes());
    if (d.toDateString() === now.toDateString()) return hm;
    return (d.getFullYear() === now.getFullYear() ? '' : d.getFullYear() + '-') +
      pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' + hm;
  }

  const UA = (typeof navigator !== 'undefined' && navigator.userAgent) || '';
  const IN_WECHAT = /MicroMessenger/i.test(UA);
  const IS_PHONE = /Android|iPhone|iPod|Mobile|HarmonyOS/i.test(UA);

  function randomId() {
    if (window.crypto && crypto.getRandomValues) {
      const b = new Uint8Array(8);
      crypto.getRandomValues(b);
      return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    }
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  /** Copies text; falls back to execCommand where the async clipboard API is missing
   * (plain-http pages, older in-app browsers). */
  async function copyText(text) {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        return true;
      }
    } catch (_) { /* fall through */ }
    const ta = el('textarea', { class: 'clip', readonly: true, 'aria-hidden': 'true', tabindex: '-1' });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch (_) { ok = false; }
    ta.remove();
    return ok;
  }

  // ---------------------------------------------------------------- syntax highlighting

  const JS_KW = 'break case catch class const continue debugger default delete do else export extends finally for from function if import in instanceof let new of return static super switch this throw try typeof var void while with yield async await null undefined true false NaN Infinity';
  const C_KW = 'auto break case char const continue default do double else enum extern float for goto if int long register return short signed sizeof static struct switch typedef union unsigned void volatile while class public private protected new this true false null nullptr bool boolean byte import package namespace using template typename virtual override final try catch throw throws extends implements interface string var val fun let func in is as when object companion data sealed open internal lateinit self init deinit guard struct protocol extension where super async await include define ifdef ifndef endif';
  const SLASH_COMMENTS = ['\\/\\/[^\\n]*', '\\/\\*[\\s\\S]*?(?:\\*\\/|$)'];
  const HASH_COMMENT = ['#[^\\n]*'];
  const DQ = '"(?:[^"\\\\\\n]|\\\\.)*"';
  const SQ = "'(?:[^'\\\\\\n]|\\\\.)*'";
  const BQ = '`(?:[^`\\\\]|\\\\.)*`';

  /** Language rules: comment and string patterns, keywords, and an optional "attribute"
   * pattern (object keys, CSS properties) shown in its own colour. */
  const LANGS = {
    js: { c: SLASH_COMMENTS, s: [BQ, DQ, SQ], kw: JS_KW },
    ts: { c: SLASH_COMMENTS, s: [BQ, DQ, SQ], kw: JS_KW + ' interface type enum implements namespace declare readonly private public protected abstract as any number string boolean unknown never keyof satisfies' },
    py: { c: HASH_COMMENT, s: ['[rRbBfFuU]{0,2}"""[\\s\\S]*?(?:"""|$)', "[rRbBfFuU]{0,2}'''[\\s\\S]*?(?:'''|$)", '[rRbBfFuU]{0,2}' + DQ, '[rRbBfFuU]{0,2}' + SQ], kw: 'and as assert async await break class continue def del elif else except False finally for from global if import in is lambda None nonlocal not or pass raise return True try while with yield self match case print len range' },
    rust: { c: SLASH_COMMENTS, s: ['b?' + DQ, "b?'(?:\\\\.|[^'\\\\\\n])'", 'r#*"[\\s\\S]*?"#*'], kw: 'as async await break const continue crate dyn else enum extern false fn for if impl in let loop match mod move mut pub ref return self Self static struct super trait true type unsafe use where while Some None Ok Err Box Vec String Option Result i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize f32 f64 bool char str' },
    go: { c: SLASH_COMMENTS, s: [BQ, DQ, SQ], kw: 'break case chan const continue default defer else fallthrough for func go goto if import interface map package range return select struct switch type var nil true false int int8 int16 int32 int64 uint uint8 uint16 uint32 uint64 float32 float64 string bool byte rune error make new len cap append' },
    c: { c: SLASH_COMMENTS, s: [DQ, SQ], kw: C_KW },
    sh: { c: HASH_COMMENT, s: [DQ, SQ], kw: 'if then else elif fi for while until do done case esac in function return local export echo exit set unset readonly shift source cd sudo apt apt-get yum brew pip npm cargo git curl wget cat grep sed awk mkdir rm cp mv ls chmod chown' },
    sql: { c: ['--[^\\n]*', '\\/\\*[\\s\\S]*?(?:\\*\\/|$)'], s: [SQ, DQ], ci: true, kw: 'select from where insert into values update set delete create table drop alter add column index on join left right inner outer full cross group by order having limit offset as and or not null is in like between distinct union all case when then else end primary key foreign references default exists count sum avg min max asc desc view with returning begin commit rollback transaction int integer varchar text boolean date timestamp serial' },
    css: { c: ['\\/\\*[\\s\\S]*?(?:\\*\\/|$)'], s: [DQ, SQ], a: '[\\w-]+(?=\\s*:[^:{;]*[;}\\n])', n: '#[\\da-fA-F]{3,8}\\b|-?\\d*\\.?\\d+(?:px|em|rem|%|vh|vw|s|ms|deg|fr)?', kw: 'important media import from to and not only screen' },
    json: { c: [], s: [DQ], a: DQ + '(?=\\s*:)', kw: 'true false null' },
    yaml: { c: HASH_COMMENT, s: [DQ, SQ], a: '[\\w.-]+(?=\\s*[:=](?:\\s|$))', kw: 'true false null yes no on off' },
    html: null, // handled by its own rules below
  };
  const LANG_ALIASES = {
    javascript: 'js', jsx: 'js', mjs: 'js', cjs: 'js', node: 'js',
    typescript: 'ts', tsx: 'ts',
    python: 'py', python3: 'py', py3: 'py',
    rs: 'rust',
    golang: 'go',
    'c++': 'c', cpp: 'c', cc: 'c', h: 'c', hpp: 'c', java: 'c', cs: 'c', csharp: 'c', 'c#': 'c',
    kotlin: 'c', kt: 'c', swift: 'c', php: 'c', dart: 'c', scala: 'c', objc: 'c', 'objective-c': 'c',
    bash: 'sh', shell: 'sh', zsh: 'sh', console: 'sh', shellscript: 'sh', powershell: 'sh', ps1: 'sh', dockerfile: 'sh', makefile: 'sh',
    mysql: 'sql', postgresql: 'sql', postgres: 'sql', sqlite: 'sql', plsql: 'sql',
    scss: 'css', less: 'css',
    jsonc: 'json', json5: 'json',
    yml: 'yaml', toml: 'yaml', ini: 'yaml', conf: 'yaml', properties: 'yaml', env: 'yaml',
    xml: 'html', svg: 'html', vue: 'html', htm: 'html', xhtml: 'html',
  };
  const NUMBER = '\\b(?:0[xX][\\da-fA-F_]+|0[bB][01_]+|\\d[\\d_]*(?:\\.\\d+)?(?:[eE][+-]?\\d+)?)';
  const compiled = {};

  function langKey(name) {
    const n = String(name || '').toLowerCase();
    if (n in LANGS) return n;
    return LANG_ALIASES[n] || null;
  }

  /** One global regex per language, alternating the token kinds; `classes[i]` is the CSS
   * class of capture group i+1 ('' = a word, looked up in the keywords). */
  function compile(key) {
    if (compiled[key]) return compiled[key];
    let rules;
    let kw = new Set();
    let ci = false;
    if (key === 'html') {
      rules = [
        ['tk-c', '<!--[\\s\\S]*?(?:-->|$)'],
        ['tk-k', '<\\/?[A-Za-z][\\w:.-]*|\\/?>'],
        ['tk-a', '[A-Za-z_:@][\\w:.-]*(?=\\s*=)'],
        ['tk-s', '"[^"\\n]*"|\'[^\'\\n]*\''],
      ];
    } else {
      const d = LANGS[key];
      ci = !!d.ci;
      kw = new Set(d.kw.split(' ').map((w) => (ci ? w.toLowerCase() : w)));
      rules = [
        ['tk-c', d.c.join('|')],
        ['tk-a', d.a],
        ['tk-s', d.s.join('|')],
        ['tk-n', d.n || NUMBER],
        ['', '[A-Za-z_$][\\w$' + (key === 'css' ? '-' : '') + ']*'],
      ].filter((r) => r[1]);
    }
    const re = new RegExp(rules.map((r) => '(' + r[1] + ')').join('|'), 'g');
    compiled[key] = { re, kw, ci, classes: rules.map((r) => r[0]) };
    return compiled[key];
  }

  const hlCache = new Map();

  /** Returns escaped, highlighted HTML for `code` (plain escaped text for unknown languages). */
  function highlight(code, name) {
    const key = langKey(name);
    if (!key) return esc(code);
    const cacheKey = key + '\u0000' + code;
    const hit = hlCache.get(cacheKey);
    if (hit !== undefined) return hit;
    const { re, kw, ci, classes } = compile(key);
    let out = '';
    let last = 0;
    let m;
    re.lastIndex = 0;
    while ((m = re.exec(code)) !== null) {
      if (m[0] === '') { re.lastIndex++; continue; }
      out += esc(code.slice(last, m.index));
      let g = 1;
      while (m[g] === undefined) g++;
      let cls = classes[g - 1];
      if (cls === '') {
        if (kw.has(ci ? m[0].toLowerCase() : m[0])) cls = 'tk-k';
        else if (code.charAt(re.lastIndex) === '(') cls = 'tk-f';
      }
      out += cls ? '<span class="' + cls + '">' + esc(m[0]) + '</span>' : esc(m[0]);
      last = re.lastIndex;
    }
    out += esc(code.slice(last));
    // Streaming re-renders the same blocks many times; keep recent results.
    if (hlCache.size > 200) hlCache.delete(hlCache.keys().next().value);
    hlCache.set(cacheKey, out);
    return out;
  }

  // ---------------------------------------------------------------- markdown

  /** Only absolute http(s) URLs become links; anything else (javascript:, data:...) stays text. */
  function safeUrl(url) {
    const u = String(url || '').trim();
    return /^https?:\/\/[^\s<>"]+$/i.test(u) ? u : null;
  }

  function link(href, innerHtml) {
    return '<a href="' + esc(href) + '" target="_blank" rel="noopener noreferrer">' + innerHtml + '</a>';
  }

  // One pass over the raw text picks out what must not be touched by emphasis rules:
  // backslash escapes | code spans | [text](url) | <url> | bare URLs.
  const INLINE_TOKENS = new RegExp([
    '\\\\([!-\\/:-@\\[-`{-~])',
    '(`+)([^`]|[^`][\\s\\S]*?[^`])\\2(?!`)',
    '!\\[([^\\[\\]\\n]*)\\]\\(\\s*<?(https?:\\/\\/[^\\s<>()"]+)>?\\s*\\)',
    '\\[([^\\[\\]\\n]*)\\]\\(\\s*<?([^\\s<>()]*(?:\\([^\\s<>()]*\\)[^\\s<>()]*)*)>?(?:\\s+"[^"\\n]*")?\\s*\\)',
    '<(https?:\\/\\/[^\\s<>]+)>',
    '(https?:\\/\\/[^\\s<>"\'`\\u3000-\\u303f\\uff01-\\uff0f\\uff1a-\\uff20\\uff3b-\\uff40\\uff5b-\\uff65]+)',
  ].join('|'), 'gi');

  /** Renders one paragraph's inline markdown to HTML. The text is escaped before any
   * markup is added; the only tags produced are fixed ones. */
  function renderInline(src) {
    const slots = [];
    const keep = (html) => '\u0000' + (slots.push(html) - 1) + '\u0000';
    let s = String(src).replace(/\u0000/g, '');
    s = s.replace(INLINE_TOKENS, (m, escaped, ticks, code, ialt, iurl, ltext, lurl, angle, bare) => {
      if (escaped !== undefined) return keep(esc(escaped));
      if (ticks !== undefined) {
        const c = code.length > 2 && code[0] === ' ' && code[code.length - 1] === ' ' ? code.slice(1, -1) : code;
        return keep('<code>' + esc(c) + '</code>');
      }
      if (iurl !== undefined) {
        // A picture (generated images): shown, and a click opens the full size.
        const src = safeUrl(iurl);
        if (!src) return keep(esc(m));
        return keep(link(src, '<img class="md-img" src="' + esc(src) + '" alt="' + esc(ialt) + '" loading="lazy" data-testid="md-image">'));
      }
      if (ltext !== undefined) {
        const href = safeUrl(lurl);
        const inner = renderInline(ltext);
        return keep(href ? link(href, inner || esc(href)) : inner);
      }
      if (angle !== undefined) return keep(link(angle, esc(angle)));
      // Bare URL: sentence punctuation at the end is not part of it.
      const trail = /[.,;:!?'")\]]+$/.exec(bare);
      const url = trail ? bare.slice(0, trail.index) : bare;
      if (!/^https?:\/\/./i.test(url)) return keep(esc(m));
      return keep(link(url, esc(url)) + (trail ? esc(trail[0]) : ''));
    });
    s = esc(s)
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, '<strong>$1</strong>')
      .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, '$1<strong>$2</strong>')
      .replace(/~~(?=\S)([\s\S]*?\S)~~/g, '<del>$1</del>')
      .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?![*\w])/g, '$1<em>$2</em>')
      .replace(/(^|[^_\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?![_\w])/g, '$1<em>$2</em>')
      .replace(/\n/g, '<br>');
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => slots[Number(i)]);
  }

  const FENCE_RE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;
  const HEADING_RE = /^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/;
  const HR_RE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const QUOTE_RE = /^ {0,3}>/;
  const LIST_RE = /^( *)([-*+]|\d{1,9}[.)])(?:([ \t]+)(.*))?$/;
  const TABLE_DELIM_RE = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;

  const isBlank = (l) => /^\s*$/.test(l);
  const indentOf = (l) => /^ */.exec(l.replace(/\t/g, '    '))[0].length;

  /** A row with pipes followed by a delimiter row (`|---|:--:|`) starts a table. */
  function isTableStart(lines, i) {
    const next = lines[i + 1];
    return lines[i].indexOf('|') >= 0 && next !== undefined && next.indexOf('|') >= 0 &&
      next.indexOf('-') >= 0 && TABLE_DELIM_RE.test(next);
  }

  /** Lines that end a paragraph. */
  function startsBlock(lines, i) {
    const l = lines[i];
    return FENCE_RE.test(l) || HEADING_RE.test(l) || HR_RE.test(l) || QUOTE_RE.test(l) ||
      LIST_RE.test(l) || isTableStart(lines, i);
  }

  /** Splits a table row on unescaped pipes. */
  function splitRow(line) {
    let s = line.trim();
    if (s.startsWith('|')) s = s.slice(1);
    if (s.endsWith('|') && !s.endsWith('\\|')) s = s.slice(0, -1);
    const cells = [];
    let cur = '';
    for (let i = 0; i < s.length; i++) {
      if (s[i] === '\\' && s[i + 1] === '|') { cur += '|'; i++; } else if (s[i] === '|') { cells.push(cur.trim()); cur = ''; } else cur += s[i];
    }
    cells.push(cur.trim());
    return cells;
  }

  /** A fenced block: language label and copy button in a header inside the <pre> (phrasing
   * content only, and no whitespace between tags since <pre> would show it). */
  function codeBlockHtml(code, info) {
    const name = String(info || '').toLowerCase();
    return '<pre class="code-block"><span class="code-head"><span class="code-lang">' + esc(name || 'text') +
      '</span><button type="button" class="code-copy" data-copy-code>' + esc(t('copy')) + '</button></span>' +
      '<code>' + highlight(code, name) + '</code></pre>';
  }

  function parseList(lines, start) {
    const first = LIST_RE.exec(lines[start]);
    const base = first[1].length;
    const ordered = /\d/.test(first[2]);
    const items = [];
    let loose = false;
    let i = start;
    while (i < lines.length) {
      const m = LIST_RE.exec(lines[i]);
      if (!m || Math.abs(m[1].length - base) > 1 || /\d/.test(m[2]) !== ordered) break;
      const pad = m[3] ? Math.min(m[3].replace(/\t/g, '    ').length, 4) : 1;
      const contentIndent = m[1].length + m[2].length + pad;
      const body = [m[4] || ''];
      i++;
      while (i < lines.length) {
        const l = lines[i];
        if (isBlank(l)) {
          // A blank line continues the item only if indented content follows.
          let j = i + 1;
          while (j < lines.length && isBlank(lines[j])) j++;
          if (j < lines.length && indentOf(lines[j]) > base) {
            while (i < j) { body.push(''); i++; }
            continue;
          }
          break;
        }
        const ind = indentOf(l);
        if (ind > base) {
          body.push(l.replace(/\t/g, '    ').slice(Math.min(ind, contentIndent)));
          i++;
          continue;
        }
        if (startsBlock(lines, i)) break;
        body.push(l); // lazy continuation of the item's paragraph
        i++;
      }
      items.push(body);
      // Blank lines between items make a loose list; anything else after them ends it.
      let j = i;
      while (j < lines.length && isBlank(lines[j])) j++;
      if (j > i) {
        const n = j < lines.length ? LIST_RE.exec(lines[j]) : null;
        if (n && Math.abs(n[1].length - base) <= 1 && /\d/.test(n[2]) === ordered) {
          loose = true;
          i = j;
          continue;
        }
        break;
      }
    }
    const startNum = ordered ? parseInt(first[2], 10) : 1;
    const open = ordered ? (startNum !== 1 ? '<ol start="' + startNum + '">' : '<ol>') : '<ul>';
    const html = open + items.map((b) => '<li>' + renderBlocks(b, !loose) + '</li>').join('') + (ordered ? '</ol>' : '</ul>');
    return { html, next: i };
  }

  /** Renders block markdown. `tight` renders lone paragraphs without <p> (tight list items). */
  function renderBlocks(lines, tight) {
    let out = '';
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (isBlank(line)) { i++; continue; }
      let m;
      if ((m = FENCE_RE.exec(line))) {
        const fence = m[1];
        const close = new RegExp('^ {0,3}' + (fence[0] === '`' ? '`' : '~') + '{' + fence.length + ',}\\s*$');
        const body = [];
        i++;
        // While streaming the closing fence may not have arrived: the block runs to the end.
        while (i < lines.length && !close.test(lines[i])) body.push(lines[i++]);
        i++;
        out += codeBlockHtml(body.join('\n'), m[2]);
        continue;
      }
      if ((m = HEADING_RE.exec(line))) {
        const level = m[1].length;
        out += '<h' + level + '>' + renderInline(m[2]) + '</h' + level + '>';
        i++;
        continue;
      }
      if (HR_RE.test(line)) { out += '<hr>'; i++; continue; }
      if (isTableStart(lines, i)) {
        const aligns = splitRow(lines[i + 1]).map((c) =>
          (/^:-+:$/.test(c) ? ' class="al-c"' : /-:$/.test(c) ? ' class="al-r"' : ''));
        const head = splitRow(line);
        i += 2;
        const rows = [];
        while (i < lines.length && !isBlank(lines[i]) && lines[i].indexOf('|') >= 0) rows.push(splitRow(lines[i++]));
        const cell = (tag, c, k) => '<' + tag + (aligns[k] || '') + '>' + renderInline(c) + '</' + tag + '>';
        out += '<div class="table-wrap"><table><thead><tr>' + head.map((c, k) => cell('th', c, k)).join('') +
          '</tr></thead><tbody>' +
          rows.map((r) => '<tr>' + head.map((_, k) => cell('td', r[k] || '', k)).join('') + '</tr>').join('') +
          '</tbody></table></div>';
        continue;
      }
      if (QUOTE_RE.test(line)) {
        const body = [];
        while (i < lines.length && QUOTE_RE.test(lines[i])) body.push(lines[i++].replace(/^ {0,3}> ?/, ''));
        out += '<blockquote>' + renderBlocks(body, false) + '</blockquote>';
        continue;
      }
      if (LIST_RE.test(line)) {
        const r = parseList(lines, i);
        out += r.html;
        i = r.next;
        continue;
      }
      const para = [line.replace(/^\s+/, '')];
      i++;
      while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines, i)) para.push(lines[i++].replace(/^\s+/, ''));
      const html = renderInline(para.join('\n').replace(/\s+$/, ''));
      out += tight ? html : '<p>' + html + '</p>';
    }
    return out;
  }

  /** Markdown source to HTML (all text escaped; links http(s) only). */
  function renderMarkdown(src) {
    return renderBlocks(String(src || '').replace(/\r\n?/g, '\n').split('\n'), false);
  }

  // ---------------------------------------------------------------- SSE

  /** Incremental parser for text/event-stream: feed it decoded text in any slices; it
   * returns the `data` payload of every complete event. */
  function createSseParser() {
    let buf = '';
    let data = [];
    function line(l) {
      if (l === '') {
        if (data.length) { const d = data.join('\n'); data = []; return d; }
        return null;
      }
      if (l[0] === ':') return null; // comment / keep-alive
      const colon = l.indexOf(':');
      const field = colon < 0 ? l : l.slice(0, colon);
      let value = colon < 0 ? '' : l.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') data.push(value);
      return null;
    }
    return {
      feed(text) {
        buf += text;
        const events = [];
        let idx;
        // A lone \r at the very end may be the first half of \r\n: wait for more.
        while ((idx = buf.search(/\r\n|\r(?!$)|\n/)) >= 0) {
          const l = buf.slice(0, idx);
          buf = buf.slice(idx + (buf[idx] === '\r' && buf[idx + 1] === '\n' ? 2 : 1));
          const ev = line(l);
          if (ev !== null) events.push(ev);
        }
        return events;
      },
      /** At end of stream: whatever complete-looking event is still buffered. */
      end() {
        const events = [];
        if (buf) { const ev = line(buf.replace(/\r$/, '')); buf = ''; if (ev !== null) events.push(ev); }
        const ev = line('');
        if (ev !== null) events.push(ev);
        return events;
      },
    };
  }

  // Node can load this file to unit-test the pure parts above; the page never takes this path.
  if (typeof document === 'undefined') {
    if (typeof module !== 'undefined') module.exports = { renderMarkdown, renderInline, highlight, createSseParser, formatPrice, esc, safeUrl };
    return;
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, message, info) {
      super(message || code || ('HTTP ' + status));
      this.status = status;
      this.code = code || '';
      this.info = info || {}; // the whole `error` object (e.g. `login_url` of openid_required)
    }
  }

  /** Browser detection and WeChat helpers (wechat.js, loaded just before this file). */
  const WX = window.ChatrelayWechat;
  /** 'wechat' (WeChat's browser), 'phone' or 'desktop': decides how to log in and pay. */
  const CLIENT = WX ? WX.clientKind(UA, window.matchMedia('(max-width: 640px) and (pointer: coarse)').matches) : 'desktop';

  const TOKEN_KEY = 'chatrelay.token';
  const UID_KEY = 'chatrelay.uid';
  const MODEL_KEY = 'chatrelay.model';

  const state = {
    config: null,
    token: readStore(TOKEN_KEY),
    uid: readStore(UID_KEY),
    me: null,
    models: [],
    convs: [],
    currentId: null,
    streams: new Map(), // conversation id -> { controller, msg }
    view: 'boot',
  };

  /** Reads an error body in either of the server's shapes. */
  async function errorFrom(res) {
    let code = '';
    let message = '';
    let info = null;
    try {
      const body = await res.json();
      if (body && body.error) {
        info = body.error;
        code = body.error.code || body.error.type || '';
        message = body.error.message || '';
      }
    } catch (_) { /* not JSON */ }
    return new ApiError(res.status, code, message, info);
  }

  /** JSON request. With `auth`, a 401 means the token is dead: back to the login view. */
  async function api(path, opts) {
    const o = opts || {};
    const headers = { Accept: 'application/json' };
    if (o.body !== undefined) headers['Content-Type'] = 'application/json';
    const token = o.token || (o.auth !== false ? state.token : null);
    if (token) headers.Authorization = 'Bearer ' + token;
    let res;
    try {
      res = await fetch(path, {
        method: o.method || (o.body !== undefined ? 'POST' : 'GET'),
        headers,
        body: o.body !== undefined ? JSON.stringify(o.body) : undefined,
        signal: o.signal,
        cache: 'no-store',
      });
    } catch (e) {
      if (e && e.name === 'AbortError') throw e;
      throw new ApiError(0, 'network', t('networkError'));
    }
    if (!res.ok) {
      const err = await errorFrom(res);
      if (res.status === 401 && o.auth !== false && !o.token) sessionExpired();
      throw err;
    }
    return res.json();
  }

  // ---------------------------------------------------------------- conversations storage

  const MAX_CONVS = 100;
  const convKey = () => 'chatrelay.convs.' + (state.uid || 'anon');

  function loadConvs() {
    let list = [];
    try { list = JSON.parse(readStore(convKey()) || '[]'); } catch (_) { list = []; }
    if (!Array.isArray(list)) list = [];
    for (const c of list) {
      if (!Array.isArray(c.messages)) c.messages = [];
      // A stream cut by closing the page: keep what arrived, as stopped.
      for (const m of c.messages) if (m.state === 'streaming') m.state = 'stopped';
    }
    state.convs = list.filter((c) => c && c.id);
    state.currentId = null;
  }

  /** Saves all conversations; when storage is full, drops the oldest until they fit. */
  function saveConvs() {
    state.convs.sort((a, b) => (b.updated || 0) - (a.updated || 0));
    if (state.convs.length > MAX_CONVS) state.convs.length = MAX_CONVS;
    const list = state.convs.filter((c) => c.messages.length);
    for (;;) {
      if (writeStore(convKey(), JSON.stringify(list))) return;
      const victim = list.length > 1 ? list.pop() : null;
      if (!victim) return;
    }
  }

  let saveTimer = 0;
  /** Saves at most every 2 s while text streams in. */
  function saveSoon() {
    if (saveTimer) return;
    saveTimer = setTimeout(() => { saveTimer = 0; saveConvs(); }, 2000);
  }

  /** Message -> its element on screen (kept out of the message so it is never saved). */
  let nodes = new WeakMap();

  const currentConv = () => state.convs.find((c) => c.id === state.currentId) || null;

  function titleFrom(text) {
    const s = text.replace(/\s+/g, ' ').trim();
    return s.length > 40 ? s.slice(0, 40) + '…' : s;
  }

  // ---------------------------------------------------------------- i18n in the DOM

  function applyLang() {
    document.documentElement.lang = t('htmlLang');
    for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
    for (const node of document.querySelectorAll('[data-i18n-ph]')) node.placeholder = t(node.dataset.i18nPh);
    for (const node of document.querySelectorAll('[data-i18n-label]')) node.setAttribute('aria-label', t(node.dataset.i18nLabel));
    const other = lang === 'zh' ? 'en' : 'zh';
    const toggle = $('lang-toggle');
    toggle.textContent = I18N[other].langName;
    toggle.lang = I18N[other].htmlLang;
    toggle.setAttribute('aria-label', I18N[other].switchTo);
    // Everything built from data is rebuilt in the new language.
    if (state.config) {
      renderLoginText();
      renderSuggestions();
      renderConvList();
      renderThread();
      renderBalance();
      renderBuy();
    }
  }

  function toggleLang() {
    lang = lang === 'zh' ? 'en' : 'zh';
    writeStore(LANG_KEY, lang);
    applyLang();
  }

  // ---------------------------------------------------------------- views

  function setTitle() {
    const title = (state.config && state.config.title) || 'AI';
    document.title = title;
    for (const node of document.querySelectorAll('[data-app-title]')) node.textContent = title;
  }

  function showView(name) {
    state.view = name;
    if (name !== 'login') stopScan();
    $('boot').hidden = name !== 'boot';
    $('login-view').hidden = name !== 'login';
    $('chat-view').hidden = name !== 'chat';
    // One language toggle, moved to wherever it is visible (a single element for tests
    // and assistive tech).
    const slot = name === 'chat' ? $('chat-lang-slot') : $('login-lang-slot');
    if (slot && $('lang-toggle').parentNode !== slot) slot.append($('lang-toggle'));
  }

  let liveTimer = 0;
  /** Announces a short status to screen readers. */
  function announce(text) {
    const region = $('live');
    region.textContent = '';
    clearTimeout(liveTimer);
    // Emptying first and filling a moment later makes a repeated message heard again.
    liveTimer = setTimeout(() => { region.textContent = text; }, 50);
  }

  let toastTimer = 0;
  function toast(text, action) {
    const box = $('toast');
    $('toast-text').textContent = text;
    const btn = $('toast-action');
    btn.hidden = !action;
    if (action) {
      btn.textContent = action.label;
      btn.onclick = () => { box.hidden = true; action.run(); };
    }
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, 5000);
  }

  // ---------------------------------------------------------------- login

  let loginNoticeKey = null;

  function renderLoginText() {
    const cfg = state.config;
    const login = cfg.login;
    const ways = loginWays();
    $('wx-login-section').hidden = !ways.oneTap;
    if (ways.oneTap) $('wx-login').href = wechatLoginUrl();
    $('wx-code-divider').hidden = !(ways.oneTap && login);
    $('login-tabs').hidden = !ways.scan;
    $('tab-scan').setAttribute('aria-selected', ways.scan && loginTab === 'scan' ? 'true' : 'false');
    $('tab-code').setAttribute('aria-selected', ways.scan && loginTab === 'code' ? 'true' : 'false');
    $('scan-section').hidden = !(ways.scan && loginTab === 'scan');
    $('login-code-section').hidden = !login || (ways.scan && loginTab === 'scan');
    renderScan();
    renderHandoff();
    $('guest-section').hidden = !cfg.guest;
    $('guest-divider').hidden = !login;
    $('login-unconfigured').hidden = !!login || !!cfg.guest;
    if (login) {
      $('login-how').textContent = login.mp_name
        ? t('loginHow', { mp: login.mp_name, kw: login.keyword })
        : t('loginHowNoName', { kw: login.keyword });
      const qr = safeUrl(login.mp_qr_url);
      $('login-qr-box').hidden = !qr;
      if (qr) {
        const img = $('login-qr');
        if (img.getAttribute('src') !== qr) img.src = qr;
        img.alt = t('loginQrAlt');
        $('login-qr-hint').textContent = IN_WECHAT ? t('loginQrHintWx') : t('loginQrHint');
      }
    }
    const notice = $('login-notice');
    notice.hidden = !loginNoticeKey;
    notice.textContent = loginNoticeKey ? t(loginNoticeKey) : '';
    if (loginErrorKey) $('login-error').textContent = t(loginErrorKey);
  }

  let loginErrorKey = null;
  function loginError(keyOrText, isKey) {
    const box = $('login-error');
    loginErrorKey = isKey === false ? null : keyOrText;
    box.textContent = keyOrText ? (isKey === false ? keyOrText : t(keyOrText)) : '';
    box.hidden = !keyOrText;
  }

  function showLogin(noticeKey) {
    loginNoticeKey = noticeKey || null;
    loginError(null);
    closeAllPanels();
    // Only offer the key field open when it is the only way in.
    const cfg = state.config;
    $('token-section').open = !cfg.login && !cfg.guest;
    renderLoginText();
    showView('login');
    // Scanning needs no keyboard: nothing to focus then.
    if (loginWays().scan && loginTab === 'scan') { startScan(); return; }
    const focus = cfg.login ? $('login-code') : cfg.guest ? $('guest-start') : $('token-input');
    if (!IS_PHONE) focus.focus();
  }

  // WeChat login (web authorization) ------------------------------------------------
  // Inside WeChat: one tap (or none: the page goes by itself when the operator allows it).
  // On a desktop: a QR code to scan with WeChat, while the page polls its ticket. The typed
  // code stays as the fallback, and the only way for accounts without web authorization.

  /** The account used for WeChat login, when it has web authorization. */
  function wechatLogin() {
    const wl = state.config && state.config.wechat_login;
    return wl && wl.oauth && wl.account ? wl : null;
  }

  /** Which WeChat logins this browser gets. WeCom and other phone browsers get none: web
   * authorization only works in WeChat, and a QR code cannot be scanned by its own phone. */
  function loginWays() {
    const wl = wechatLogin();
    return { oneTap: !!wl && CLIENT === 'wechat', scan: !!wl && CLIENT === 'desktop' };
  }

  /** Starts web authorization, coming back to this page (path and query; the fragment is
   * where the server puts the login). */
  function wechatLoginUrl() {
    const wl = wechatLogin();
    return WX.withNext('/auth/wechat/' + encodeURIComponent(wl ? wl.account : ''), location.pathname + location.search);
  }

  /** Inside WeChat, not logged in: log in without asking, at most once per tab session
   * (coming back without a login must not bounce forever). */
  function autoWechatLogin() {
    const wl = wechatLogin();
    if (!wl || !wl.auto || CLIENT !== 'wechat' || !WX.claimAutoLogin()) return false;
    $('boot-text').textContent = t('wxRedirecting');
    location.assign(wechatLoginUrl());
    return true;
  }

  let handoffError = null; // { key, msg } of a failed `#login=` handoff, shown on the login view

  function renderHandoff() {
    const box = $('login-handoff');
    box.hidden = !handoffError;
    box.textContent = handoffError ? t(handoffError.key, { msg: handoffError.msg || '' }) : '';
  }

  /** The one-time login `H` the server put in `#login=H` after web authorization, removed
   * from the address (it must not be bookmarked, shared or sent again). */
  function takeLoginHandoff() {
    const m = /^#login=([A-Za-z0-9_-]{1,128})$/.exec(location.hash);
    if (!m) return null;
    history.replaceState(null, '', location.pathname + location.search);
    return m[1];
  }

  /** Trades the handoff for a token. Returns whether the user is now logged in. */
  async function redeemHandoff(handoff) {
    $('boot-text').textContent = t('loggingIn');
    try {
      const r = await api('/api/login/ticket/' + encodeURIComponent(handoff), { auth: false });
      if (r.status === 'done' && r.token) {
        handoffError = null;
        WX.resetAutoLogin();
        signIn(r.token, r.uid);
        return true;
      }
      handoffError = { key: 'handoffExpired' };
    } catch (e) {
      handoffError = e.status === 404 || e.status === 410 ? { key: 'handoffExpired' } : { key: 'handoffFailed', msg: e.message };
    }
    return false;
  }

  let loginTab = 'scan'; // desktop with web authorization: 'scan' or 'code'

  function selectLoginTab(tab) {
    if (loginTab === tab) return;
    loginTab = tab;
    loginError(null);
    renderLoginText();
    if (tab === 'scan') startScan();
    else { stopScan(); if (!IS_PHONE) $('login-code').focus(); }
  }

  const SCAN_POLL_MS = 1500;
  const scan = {
    ticket: null, // { ticket, qr_svg, expires_at }
    phase: 'idle', // idle | creating | waiting | expired | failed | done
    error: '',
    timer: 0,
    seq: 0, // bumps on stop: answers to an older poll are dropped
  };

  /** Shows a QR code to scan (a new ticket unless the current one has time left) and polls. */
  async function startScan() {
    stopScan();
    const seq = scan.seq;
    const now = Math.floor(Date.now() / 1000);
    if (scan.ticket && scan.ticket.expires_at - now > 30 && scan.phase === 'waiting') {
      renderScan();
      scanSoon(0);
      return;
    }
    scan.phase = 'creating';
    scan.ticket = null;
    renderScan();
    try {
      const r = await api('/api/login/ticket', { method: 'POST', auth: false });
      if (seq !== scan.seq) return;
      scan.ticket = r;
      scan.phase = 'waiting';
      renderScan();
      scanSoon(SCAN_POLL_MS);
    } catch (e) {
      if (seq !== scan.seq) return;
      scan.phase = 'failed';
      scan.error = e.status === 429 ? t('throttled') : e.message;
      renderScan();
    }
  }

  function stopScan() {
    clearTimeout(scan.timer);
    scan.timer = 0;
    scan.seq++;
  }

  function scanSoon(delay) {
    clearTimeout(scan.timer);
    const seq = scan.seq;
    scan.timer = setTimeout(() => pollScan(seq), delay);
  }

  async function pollScan(seq) {
    const tk = scan.ticket;
    if (seq !== scan.seq || !tk || state.view !== 'login') return;
    if (tk.expires_at <= Math.floor(Date.now() / 1000)) {
      scan.phase = 'expired';
      renderScan();
      return;
    }
    let r;
    try {
      r = await api('/api/login/ticket/' + encodeURIComponent(tk.ticket), { auth: false });
    } catch (e) {
      if (seq !== scan.seq) return;
      if (e.status === 404 || e.status === 410) { scan.phase = 'expired'; renderScan(); return; }
      scanSoon(SCAN_POLL_MS * 2); // transient trouble: keep trying while the ticket lives
      return;
    }
    if (seq !== scan.seq) return;
    if (r.status === 'done' && r.token) {
      scan.phase = 'done';
      scan.ticket = null;
      renderScan();
      signIn(r.token, r.uid);
    } else if (r.status === 'pending') {
      scanSoon(SCAN_POLL_MS);
    } else {
      scan.phase = 'expired';
      renderScan();
    }
  }

  function renderScan() {
    if ($('scan-section').hidden) return;
    const img = $('scan-qr');
    const tk = scan.ticket;
    const showQr = !!tk && (scan.phase === 'waiting' || scan.phase === 'expired');
    if (showQr && img.getAttribute('src') !== tk.qr_svg) img.src = tk.qr_svg;
    img.hidden = !showQr;
    img.alt = t('scanQrAlt');
    $('scan-frame').classList.toggle('stale', scan.phase === 'expired' || scan.phase === 'failed');
    $('scan-spinner').hidden = scan.phase !== 'creating';
    $('scan-refresh').hidden = !(scan.phase === 'expired' || scan.phase === 'failed');
    const status = $('scan-status');
    status.dataset.status = scan.phase;
    const text = {
      creating: [t('scanCreating'), ''],
      waiting: [t('scanWaiting'), t('scanWaitingSub')],
      expired: [t('scanExpired'), t('scanExpiredSub')],
      failed: [t('scanFailed', { msg: scan.error }), ''],
      done: [t('scanDone'), ''],
    }[scan.phase] || ['', ''];
    setText(status, text[0]);
    setText($('scan-sub'), text[1]);
  }

  let expiredShown = false;
  /** A request came back 401: the token expired or was revoked. */
  function sessionExpired() {
    if (state.view !== 'chat' || expiredShown) return;
    expiredShown = true;
    signOut('expired');
  }

  function signOut(noticeKey) {
    // Logged out on purpose: do not log straight back in with WeChat on the next load.
    if (noticeKey === 'loggedOut') WX.blockAutoLogin();
    for (const s of state.streams.values()) s.controller.abort();
    state.token = null;
    state.me = null;
    writeStore(TOKEN_KEY, null);
    writeStore(UID_KEY, null);
    resetBuy();
    showLogin(noticeKey);
    // Inside WeChat an expired session renews itself, like the first visit (same guard).
    if (noticeKey === 'expired') autoWechatLogin();
  }

  function signIn(token, uid) {
    state.token = token;
    state.uid = uid !== undefined && uid !== null ? String(uid) : null;
    writeStore(TOKEN_KEY, token);
    writeStore(UID_KEY, state.uid);
    expiredShown = false;
    handoffError = null;
    stopScan();
    $('login-code').value = '';
    $('token-input').value = '';
    enterChat();
  }

  function setBusy(button, busy) {
    button.disabled = busy;
    button.setAttribute('aria-busy', busy ? 'true' : 'false');
  }

  /** A login code as typed or pasted, in its canonical form: Crockford's base32 (the
   * server reads O, I, L as 0, 1, 1 and ignores case), at most 8 characters. A pasted
   * message ("验证码：K7QM-2XRT ...") gives up its code. */
  function normalizeCode(value) {
    const found = value.length > 9 && value.match(/[0-9a-z]{4}[-\s]?[0-9a-z]{4}(?![0-9a-z])/i);
    return (found ? found[0] : value)
      .toUpperCase()
      .replace(/O/g, '0')
      .replace(/[IL]/g, '1')
      .replace(/[^0-9A-HJKMNP-TV-Z]+/g, '')
      .slice(0, 8);
  }
  /** Two groups of four, as the Official Account shows it. */
  function showCode(code) {
    return code.length > 4 ? code.slice(0, 4) + '-' + code.slice(4) : code;
  }

  async function submitCode(ev) {
    ev.preventDefault();
    const input = $('login-code');
    const code = normalizeCode(input.value);
    if (code.length !== 8) {
      loginError('codeInvalid');
      input.focus();
      return;
    }
    loginError(null);
    setBusy($('login-submit'), true);
    try {
      const r = await api('/api/login', { body: { code }, auth: false });
      signIn(r.token, r.uid);
    } catch (e) {
      if (e.status === 401) loginError('badCode');
      else if (e.status === 429) loginError('throttled');
      else if (e.status === 0) loginError('networkError');
      else loginError(e.message || t('serverError'), false);
      input.select();
    } finally {
      setBusy($('login-submit'), false);
    }
  }

  async function startGuest() {
    loginError(null);
    setBusy($('guest-start'), true);
    try {
      const r = await api('/api/guest', { method: 'POST', auth: false });
      signIn(r.token, r.uid);
    } catch (e) {
      if (e.status === 404) loginError('guestOff');
      else if (e.status === 429) loginError('guestThrottled');
      else if (e.status === 0) loginError('networkError');
      else loginError(e.message || t('serverError'), false);
    } finally {
      setBusy($('guest-start'), false);
    }
  }

  async function submitToken(ev) {
    ev.preventDefault();
    const token = $('token-input').value.trim().replace(/^Bearer\s+/i, '');
    if (!token) { loginError('tokenEmpty'); $('token-input').focus(); return; }
    loginError(null);
    setBusy($('token-submit'), true);
    try {
      // Checking the key also tells us whose conversations to show.
      const me = await api('/api/me', { token });
      state.me = me;
      signIn(token, me.uid);
    } catch (e) {
      if (e.status === 401) loginError('tokenInvalid');
      else if (e.status === 0) loginError('networkError');
      else loginError(e.message || t('serverError'), false);
    } finally {
      setBusy($('token-submit'), false);
    }
  }

  // ---------------------------------------------------------------- chat

  function enterChat() {
    showView('chat');
    loadConvs();
    newChat(false);
    renderConvList();
    $('buy-open').hidden = !state.config.buy;
    $('account-buy').hidden = !state.config.buy;
    renderBalance();
    refreshMe();
    loadModels();
    const returning = orderInQuery();
    const resume = takeResume();
    if (returning && state.config.buy) resumeOrder(returning);
    else if (resume && state.config.buy) { buy.resume = resume; openBuy(); }
    else if (location.hash === '#buy') openBuy();
    else if (!IS_PHONE) $('chat-input').focus();
  }

  async function loadModels() {
    const select = $('model-select');
    try {
      const r = await api('/v1/models');
      state.models = (r.data || []).map((m) => m.id).filter(Boolean);
    } catch (e) {
      if (e.status !== 401) showBanner(t('errGeneric', { msg: e.message }));
      return;
    }
    const saved = readStore(MODEL_KEY);
    select.textContent = '';
    for (const id of state.models) select.append(el('option', { value: id, text: id }));
    if (saved && state.models.includes(saved)) select.value = saved;
    select.disabled = state.models.length < 2;
  }

  function currentModel() {
    return $('model-select').value || readStore(MODEL_KEY) || state.models[0] || '';
  }

  function renderSuggestions() {
    const box = $('suggestions');
    box.textContent = '';
    for (const s of t('suggestions')) {
      const b = el('button', { type: 'button', class: 'suggestion', text: s });
      b.addEventListener('click', () => { $('chat-input').value = s; autosize(); send(); });
      box.append(b);
    }
  }

  function renderConvList() {
    const list = $('conv-list');
    list.textContent = '';
    const convs = state.convs.filter((c) => c.messages.length);
    $('conv-empty').hidden = convs.length > 0;
    for (const c of convs) {
      const title = c.title || t('newChat');
      const open = el('button', {
        type: 'button', class: 'conv-open', 'data-testid': 'conversation-item',
        'aria-current': c.id === state.currentId ? 'true' : null, title,
      }, el('span', { class: 'conv-title', text: title }));
      if (state.streams.has(c.id)) open.append(el('span', { class: 'conv-dot', 'aria-hidden': 'true' }));
      open.addEventListener('click', () => {
        switchConv(c.id);
        if ($('chat-view').classList.contains('drawer-open')) closeDrawer();
        else if (!IS_PHONE) $('chat-input').focus();
      });
      const del = el('button', {
        type: 'button', class: 'icon-btn conv-del', 'data-testid': 'conversation-delete',
        'aria-label': t('deleteConv', { title }), title: t('deleteConv', { title }),
      });
      del.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M5 7h14M10 11v6M14 11v6M6 7l1 12h10l1-12M9 7V4h6v3" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"/></svg>';
      del.addEventListener('click', () => deleteConv(c.id));
      list.append(el('li', { class: 'conv' + (c.id === state.currentId ? ' active' : '') }, open, del));
    }
  }

  function switchConv(id) {
    state.currentId = id;
    hideBanner();
    renderConvList();
    renderThread();
    updateComposer();
    scrollToBottom(true);
  }

  function newChat(focus) {
    state.currentId = null;
    hideBanner();
    renderConvList();
    renderThread();
    updateComposer();
    closeDrawer();
    if (focus !== false) $('chat-input').focus();
  }

  function deleteConv(id) {
    const idx = state.convs.findIndex((c) => c.id === id);
    if (idx < 0) return;
    const [conv] = state.convs.splice(idx, 1);
    const s = state.streams.get(id);
    if (s) s.controller.abort();
    if (state.currentId === id) state.currentId = null;
    saveConvs();
    renderConvList();
    renderThread();
    updateComposer();
    // The focused delete button is gone: continue from the next item, or "new chat".
    const items = $('conv-list').querySelectorAll('.conv-del');
    const next = items[Math.min(idx, items.length - 1)];
    (next || $('new-chat')).focus();
    toast(t('deleted'), {
      label: t('undo'),
      run() { state.convs.push(conv); saveConvs(); renderConvList(); },
    });
  }

  /** Builds one message's element. Assistant text is markdown rendered from escaped text;
   * user text is only ever text. */
  function messageNode(conv, msg, index) {
    if (msg.role === 'user') {
      return el('div', { class: 'msg msg-user', 'data-testid': 'message-user', role: 'article', 'aria-label': t('you') },
        el('div', { class: 'bubble', text: msg.content }));
    }
    const node = el('div', {
      class: 'msg msg-assistant', 'data-testid': 'message-assistant', 'data-state': msg.state || 'done',
      role: 'article', 'aria-label': t('assistant'),
    },
      el('div', { class: 'md' }),
      el('div', { class: 'msg-foot' }));
    nodes.set(msg, node);
    fillMessage(conv, msg, index);
    return node;
  }

  /** Updates an assistant message's element from its state. */
  function fillMessage(conv, msg, index) {
    const node = nodes.get(msg);
    if (!node) return;
    node.dataset.state = msg.state || 'done';
    const md = node.querySelector('.md');
    if (msg.content) md.innerHTML = renderMarkdown(msg.content);
    else if (msg.state === 'streaming') md.innerHTML = '<span class="typing" aria-hidden="true"><i></i><i></i><i></i></span>';
    else md.textContent = '';
    const foot = node.querySelector('.msg-foot');
    foot.textContent = '';
    if (msg.state === 'streaming') return;
    if (msg.state === 'stopped') foot.append(el('span', { class: 'tag', text: t('stopped') }));
    if (msg.state === 'error') {
      foot.append(el('span', { class: 'tag tag-error', 'data-testid': 'answer-error', text: msg.error || t('answerFailed') }));
      if (msg.errorCode === 'insufficient_quota' && state.config && state.config.buy) {
        const buy = el('button', { type: 'button', class: 'link-btn', 'data-testid': 'answer-buy', text: t('buyCredits') });
        buy.addEventListener('click', openBuy);
        foot.append(buy);
      }
    }
    if (msg.content) {
      const copy = el('button', { type: 'button', class: 'link-btn', 'data-copy-msg': '', text: t('copy') });
      foot.append(copy);
    }
    const isLast = index === conv.messages.length - 1;
    if (isLast && !state.streams.has(conv.id) && canRetry(msg)) {
      const again = el('button', { type: 'button', class: 'link-btn', 'data-testid': 'regenerate', text: t('regenerate') });
      again.addEventListener('click', () => regenerate(conv));
      foot.append(again);
    }
  }

  /** Credits the user could spend now, when known. */
  function availableNow() {
    const b = state.me && state.me.balance;
    return b ? b.available : null;
  }

  /** Whether asking again can succeed: not after running out of credits, until the balance
   * has grown (a purchase, a grant, tomorrow's free credits). */
  function canRetry(msg) {
    if (msg.state !== 'error' || msg.errorCode !== 'insufficient_quota') return true;
    const now = availableNow();
    return now !== null && typeof msg.availableAtError === 'number' && now > msg.availableAtError;
  }

  /** Redraws the last answer of the open conversation (its actions depend on the balance). */
  function refreshLastAnswer() {
    const conv = currentConv();
    if (!conv || !conv.messages.length || state.streams.has(conv.id)) return;
    const i = conv.messages.length - 1;
    if (conv.messages[i].role === 'assistant') fillMessage(conv, conv.messages[i], i);
  }

  function renderThread() {
    const conv = currentConv();
    const thread = $('thread');
    thread.textContent = '';
    nodes = new WeakMap();
    $('welcome').hidden = !!(conv && conv.messages.length);
    if (!conv) return;
    conv.messages.forEach((m, i) => thread.append(messageNode(conv, m, i)));
  }

  function nearBottom() {
    const box = $('messages');
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }
  function scrollToBottom(force) {
    const box = $('messages');
    if (force || nearBottom()) box.scrollTop = box.scrollHeight;
  }

  function updateComposer() {
    const conv = currentConv();
    const streaming = !!(conv && state.streams.has(conv.id));
    $('send').hidden = streaming;
    $('stop').hidden = !streaming;
  }

  function autosize() {
    const ta = $('chat-input');
    ta.style.height = 'auto';
    ta.style.height = Math.min(ta.scrollHeight, Math.round(window.innerHeight * 0.35)) + 'px';
  }

  function send() {
    const input = $('chat-input');
    const text = input.value.replace(/\s+$/, '');
    if (!text.trim()) { input.focus(); return; }
    let conv = currentConv();
    if (conv && state.streams.has(conv.id)) return;
    if (!conv) {
      conv = { id: randomId(), title: titleFrom(text), created: Date.now(), updated: Date.now(), messages: [] };
      state.convs.unshift(conv);
      state.currentId = conv.id;
    }
    conv.messages.push({ role: 'user', content: text });
    input.value = '';
    autosize();
    startAnswer(conv);
  }

  function regenerate(conv) {
    if (state.streams.has(conv.id)) return;
    const last = conv.messages[conv.messages.length - 1];
    if (last && last.role === 'assistant') conv.messages.pop();
    if (!conv.messages.length) return;
    startAnswer(conv);
  }

  /** What the server sees: the whole conversation (the /v1 API is stateless), without
   * answers that failed before saying anything. */
  function wireMessages(conv, pending) {
    return conv.messages
      .filter((m) => m !== pending && (m.role === 'user' || (m.content && m.content.trim())))
      .map((m) => ({ role: m.role, content: m.content }));
  }

  function startAnswer(conv) {
    hideBanner();
    const msg = { role: 'assistant', content: '', state: 'streaming' };
    conv.messages.push(msg);
    conv.updated = Date.now();
    saveConvs();
    renderConvList();
    renderThread();
    scrollToBottom(true);
    stream(conv, msg);
  }

  /** Streams one answer into `msg`. Rendering is batched per animation frame. */
  async function stream(conv, msg) {
    const controller = new AbortController();
    state.streams.set(conv.id, { controller, msg });
    updateComposer();
    renderConvList();
    announce(t('answering'));
    let frame = 0;
    const paint = () => {
      frame = 0;
      if (conv.id !== state.currentId || !nodes.get(msg)) return;
      const stick = nearBottom();
      fillMessage(conv, msg, conv.messages.indexOf(msg));
      if (stick) scrollToBottom(true);
    };
    const schedule = () => { if (!frame) frame = requestAnimationFrame(paint); };
    let finished = false;
    let failure = null;
    try {
      let res;
      try {
        res = await fetch('/v1/chat/completions', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream', Authorization: 'Bearer ' + state.token, 'X-Chatrelay-Client': 'web' },
          body: JSON.stringify({
            model: currentModel(),
            messages: wireMessages(conv, msg),
            stream: true,
            stream_options: { include_usage: true },
          }),
          signal: controller.signal,
          cache: 'no-store',
        });
      } catch (e) {
        if (e && e.name === 'AbortError') throw e;
        throw new ApiError(0, 'network', t('networkError'));
      }
      if (!res.ok) throw await errorFrom(res);
      const parser = createSseParser();
      const handle = (data) => {
        if (data === '[DONE]') { finished = true; return; }
        let chunk;
        try { chunk = JSON.parse(data); } catch (_) { return; }
        if (chunk.error) {
          failure = new ApiError(200, chunk.error.code || chunk.error.type, chunk.error.message);
          return;
        }
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && typeof delta.content === 'string' && delta.content) {
          msg.content += delta.content;
          schedule();
          saveSoon();
        }
      };
      if (res.body && res.body.getReader) {
        const reader = res.body.getReader();
        const decoder = new TextDecoder('utf-8');
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          parser.feed(decoder.decode(value, { stream: true })).forEach(handle);
          if (finished || failure) { reader.cancel().catch(() => {}); break; }
        }
        parser.feed(decoder.decode()).forEach(handle);
      } else {
        // No streaming body (very old WebViews): the whole answer at once.
        parser.feed(await res.text()).forEach(handle);
      }
      parser.end().forEach(handle);
      if (failure) throw failure;
      if (!finished) throw new ApiError(0, 'interrupted', t('errInterrupted'));
      msg.state = 'done';
      announce(t('answerDone'));
    } catch (e) {
      if (e && e.name === 'AbortError') {
        msg.state = 'stopped';
        announce(t('answerStopped'));
      } else {
        msg.state = 'error';
        msg.error = describeError(e);
        msg.errorCode = e.code || '';
        announce(t('answerFailed') + '：' + msg.error);
        // The error is shown once, in place of the answer (with its buy button).
        if (e.status === 401) sessionExpired();
      }
    } finally {
      if (frame) cancelAnimationFrame(frame);
      state.streams.delete(conv.id);
      conv.updated = Date.now();
      clearTimeout(saveTimer);
      saveTimer = 0;
      saveConvs();
      if (conv.id === state.currentId) {
        fillMessage(conv, msg, conv.messages.indexOf(msg));
        updateComposer();
      }
      renderConvList();
      if (state.token) {
        refreshMe().then(() => {
          if (msg.errorCode === 'insufficient_quota' && msg.availableAtError === undefined) {
            msg.availableAtError = availableNow();
            saveConvs();
          }
        });
      }
    }
  }

  /** The text to show for a failed answer. */
  function describeError(e) {
    const code = e.code || '';
    if (code === 'insufficient_quota') return e.message || t('errQuota');
    if (code === 'rate_limit_exceeded') return e.message || t('errRate');
    if (code === 'upstream_error') return t('errUpstream');
    if (code === 'model_not_found') { loadModels(); return t('errModel'); }
    if (code === 'account_deactivated') return t('errBanned');
    if (e.status === 401) return t('expired');
    if (e.status === 0) return e.message;
    if (e.status === 503 || e.status === 502 || code === 'service_unavailable') return t('errUnavailable');
    return t('errGeneric', { msg: e.message || ('HTTP ' + e.status) });
  }

  function stopCurrent() {
    const conv = currentConv();
    const s = conv && state.streams.get(conv.id);
    // Aborting the fetch closes the connection; the server then cancels the LLM call.
    if (s) s.controller.abort();
    $('chat-input').focus();
  }

  // Error banner --------------------------------------------------------

  function showBanner(text, withBuy) {
    $('error-text').textContent = text;
    $('error-buy').hidden = !withBuy;
    $('error-banner').hidden = false;
  }
  function hideBanner() { $('error-banner').hidden = true; }

  // ---------------------------------------------------------------- account

  let meSeq = 0;
  async function refreshMe() {
    const seq = ++meSeq;
    try {
      const me = await api('/api/me');
      if (seq !== meSeq) return;
      state.me = me;
      if (me.uid !== undefined && String(me.uid) !== state.uid) {
        // Tokens from before the uid was stored: adopt it, and the matching history.
        state.uid = String(me.uid);
        writeStore(UID_KEY, state.uid);
        if (!state.streams.size) { loadConvs(); renderConvList(); renderThread(); }
      }
      renderBalance();
      refreshLastAnswer();
    } catch (_) { /* the chip keeps its last value; 401 is handled by api() */ }
  }

  function signed(n) { return (n > 0 ? '+' : n < 0 ? '−' : '') + Math.abs(n); }

  function renderBalance() {
    const me = state.me;
    const b = me && me.balance;
    $('balance-available').textContent = b ? String(b.available) : '–';
    $('acc-available').textContent = b ? String(b.available) : '–';
    $('balance-paid').textContent = b ? String(b.paid) : '–';
    const plan = me && me.plan;
    const planDaily = plan && plan.active ? plan.daily_credits : 0;
    $('balance-free').textContent = b ? b.free_left + ' / ' + (me.free_daily + planDaily) : '–';
    renderPlan(plan);
    $('account-open').classList.toggle('low', !!b && b.available === 0);
    const held = $('balance-held');
    held.hidden = !(b && b.held > 0);
    if (b && b.held > 0) held.textContent = t('held', { n: b.held });
    $('account-name').textContent = me ? t('userLine', { name: me.name || '', uid: me.uid }) : '';
    const list = $('usage-list');
    list.textContent = '';
    const usage = ((me && me.usage) || []).slice().sort((x, y) => y.at - x.at);
    $('usage-empty').hidden = usage.length > 0 || !me;
    for (const u of usage) {
      const parts = [];
      if (u.free_delta) parts.push(t('deltaFree', { n: signed(u.free_delta) }));
      if (u.paid_delta) parts.push(t('deltaPaid', { n: signed(u.paid_delta) }));
      const total = (u.free_delta || 0) + (u.paid_delta || 0);
      list.append(el('li', { class: 'usage-item' },
        el('div', { class: 'usage-main' },
          el('span', { class: 'usage-kind', text: t('kind_' + u.kind) }),
          el('span', { class: 'usage-delta ' + (total >= 0 ? 'pos' : 'neg'), text: parts.join(' · ') || '0' })),
        el('div', { class: 'usage-sub muted small' },
          el('time', { datetime: new Date(u.at * 1000).toISOString(), text: formatTime(u.at) }),
          u.reason ? el('span', { class: 'usage-reason', text: u.reason }) : null)));
    }
  }

  // ---------------------------------------------------------------- membership plan
  // The account sheet's 会员 card (GET /api/me's `plan`): its name, the credits it adds to
  // each day's free allowance, its last day; an ended plan says when it ended.
  function renderPlan(plan) {
    const card = $('plan-card');
    card.hidden = !plan;
    if (!plan) return;
    card.classList.toggle('ended', !plan.active);
    $('plan-name').textContent = t('planLine', { name: plan.name, daily: plan.daily_credits });
    $('plan-until').textContent = plan.active
      ? t('planUntil', { end: plan.end, days: plan.days_left })
      : t('planEnded', { end: plan.end });
  }

  // ---------------------------------------------------------------- redemption codes
  // The account sheet's 兑换码 form: POST /api/redeem, then the new balance. The server's
  // message (already in Chinese) says what went wrong: used, revoked, expired, too many tries.

  function showRedeem(text, ok) {
    const out = $('redeem-result');
    out.textContent = text;
    out.classList.toggle('ok', ok);
    out.classList.toggle('form-error', !ok);
    out.hidden = false;
  }

  async function submitRedeem(ev) {
    ev.preventDefault();
    const input = $('redeem-code');
    const code = input.value.trim();
    if (!code) { input.focus(); return; }
    const button = $('redeem-submit');
    button.disabled = true;
    $('redeem-result').hidden = true;
    try {
      const r = await api('/api/redeem', { body: { code } });
      input.value = '';
      showRedeem(r.plan
        ? t('redeemPlanOk', { name: r.plan.name, end: r.plan.end })
        : t('redeemOk', { n: r.added.credits, available: r.balance.available }), true);
      if (state.me) { state.me.balance = r.balance; renderBalance(); }
      refreshMe();
    } catch (e) {
      showRedeem((e && e.message) || t('networkError'), false);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- usage log (用量明细)
  // A page of /api/usage (newest first) when the account sheet opens; "load more" asks for
  // the page before the last one shown.

  const answers = { next: null, seq: 0, busy: false };
  const PLATFORM_NAMES = { web: '网页', api: 'API', mp: '公众号', wecom: '企业微信', zsxq: '知识星球', tg: 'Telegram' };

  function answerItem(r) {
    const extra = r.outcome && r.outcome !== 'answered'
      ? t('outcome_' + r.outcome, { n: r.refunded || 0 }) : '';
    const parts = [];
    if (r.credits.free) parts.push(t('deltaFree', { n: r.credits.free }));
    if (r.credits.paid) parts.push(t('deltaPaid', { n: r.credits.paid }));
    if (r.credits.plan) parts.push(t('deltaPlan', { n: r.credits.plan }));
    return el('li', { class: 'usage-item answer-item', 'data-testid': 'answer-item' },
      el('div', { class: 'usage-main' },
        el('span', { class: 'usage-kind', text: r.model }),
        el('span', { class: 'usage-delta neg answer-credits', text: t('answerCredits', { n: r.credits.total }) })),
      el('div', { class: 'usage-sub muted small' },
        el('time', { datetime: new Date(r.at * 1000).toISOString(), text: formatTime(r.at) }),
        el('span', { text: PLATFORM_NAMES[r.platform] || r.platform }),
        el('span', { class: 'usage-reason', text: t('answerTokens', { p: r.prompt_tokens, c: r.completion_tokens }) }),
        parts.length ? el('span', { text: parts.join(' · ') }) : null,
        extra ? el('span', { class: 'answer-outcome', text: extra }) : null));
  }

  async function loadAnswers(more) {
    if (more && (answers.busy || !answers.next)) return;
    const seq = ++answers.seq;
    answers.busy = true;
    const list = $('answers-list');
    const query = '?limit=20' + (more ? '&before=' + encodeURIComponent(answers.next) : '');
    try {
      const page = await api('/api/usage' + query);
      if (seq !== answers.seq) return;
      if (!more) list.textContent = '';
      for (const r of page.data || []) list.append(answerItem(r));
      answers.next = page.next_before || null;
      $('answers-more').hidden = !answers.next;
      $('answers-empty').hidden = list.children.length > 0;
    } catch (_) { /* the list keeps what it shows; 401 is handled by api() */ }
    finally { if (seq === answers.seq) answers.busy = false; }
  }

  // ---------------------------------------------------------------- panels (sheets, drawer)

  let panelOpener = null;

  function openPanel(id) {
    // Going from one sheet to another keeps the first opener to return focus to.
    const fromSheet = !$('account-panel').hidden || !$('buy-panel').hidden;
    closeAllPanels(true);
    if (!fromSheet) panelOpener = document.activeElement;
    const panel = $(id);
    panel.hidden = false;
    // Everything behind the sheet is inert: focus cannot wander off, readers skip it.
    $('chat-view').inert = true;
    const focus = panel.querySelector('[data-close]');
    if (focus) focus.focus();
  }

  function closePanel(id, keepFocus) {
    const panel = $(id);
    if (panel.hidden) return;
    panel.hidden = true;
    if (id === 'buy-panel') {
      stopPolling();
      dropOrderQuery();
      if (location.hash === '#buy') history.replaceState(null, '', location.pathname + location.search);
    }
    if (!$('account-panel').hidden || !$('buy-panel').hidden) return;
    $('chat-view').inert = false;
    if (!keepFocus && panelOpener && document.contains(panelOpener)) panelOpener.focus();
  }

  function closeAllPanels(keepFocus) {
    closePanel('account-panel', keepFocus);
    closePanel('buy-panel', keepFocus);
  }

  function openAccount() {
    closeDrawer();
    renderBalance();
    openPanel('account-panel');
    refreshMe();
    loadAnswers(false);
  }

  const isNarrow = () => window.matchMedia('(max-width: 640px)').matches;

  function openDrawer() {
    $('chat-view').classList.add('drawer-open');
    $('scrim').hidden = false;
    $('menu-open').setAttribute('aria-expanded', 'true');
    $('main').inert = true;
    $('sidebar-close').focus();
  }
  function closeDrawer() {
    if (!$('chat-view').classList.contains('drawer-open')) return;
    $('chat-view').classList.remove('drawer-open');
    $('scrim').hidden = true;
    $('menu-open').setAttribute('aria-expanded', 'false');
    $('main').inert = false;
    $('menu-open').focus();
  }

  // ---------------------------------------------------------------- buy

  const buy = {
    products: null, // null = not loaded
    loadError: null,
    channels: [],
    productId: null,
    channel: null,
    order: null, // the order on screen
    orders: new Map(), // product|channel -> order, reused while still payable
    methods: null, // channel -> enabled methods, from /api/products (null: the server has none)
    phase: 'idle', // idle | ready | creating | order | failed | checking | missing | authorizing
    failMsg: '',
    payState: '', // non-QR methods: '' | invoking | ok | cancel | fail | leaving | returned
    payMsg: '',
    resume: null, // { product, channel } to buy right after a WeChat authorization detour
    seq: 0,
    pollTimer: 0,
    tickTimer: 0,
    qrUrl: null,
    qrFor: null,
    qrError: false,
    creating: null,
  };

  /** Forgets the shop state of the previous user. */
  function resetBuy() {
    stopPolling();
    Object.assign(buy, { productId: null, order: null, phase: 'idle', creating: null, qrError: false, payState: '', resume: null });
    buy.orders.clear();
    buy.seq++;
    if (buy.qrUrl) URL.revokeObjectURL(buy.qrUrl);
    buy.qrUrl = null;
    buy.qrFor = null;
  }

  function openBuy() {
    if (!state.config.buy || state.view !== 'chat') return;
    closeDrawer();
    openPanel('buy-panel');
    if (location.hash !== '#buy') history.replaceState(null, '', '#buy');
    renderBuy();
    if (!buy.products) loadProducts();
    if (buy.order && buy.order.status === 'created') pollSoon(0);
  }

  async function loadProducts() {
    try {
      const r = await api('/api/products');
      buy.products = r.products || [];
      buy.methods = r.methods && typeof r.methods === 'object' ? r.methods : null;
      const allowed = state.config.channels || [];
      buy.channels = (r.channels || allowed).filter((c) => allowed.includes(c) && (c === 'wechat' || c === 'alipay') &&
        (methodFor(c) !== '' || alipayBlocked(c)));
      buy.loadError = null;
      // Preselect a channel only when the choice is obvious (one channel, or WeChat Pay inside
      // WeChat); otherwise the user picks, so no order is created for a channel they never wanted.
      if (!buy.channels.includes(buy.channel)) {
        buy.channel = buy.channels.length === 1 ? buy.channels[0]
          : IN_WECHAT && buy.channels.includes('wechat') ? 'wechat' : null;
      }
    } catch (e) {
      buy.loadError = e.message;
    }
    renderBuy();
    if (buy.resume && buy.products) resumePurchase();
  }

  /** The payment method for `channel` in this browser (see wechat.js: null = none named,
   * the server's default; '' = nothing enabled works here). */
  function methodFor(channel) {
    return channel ? WX.chooseMethod(CLIENT, channel, buy.methods) : null;
  }

  /** Inside WeChat, Alipay is listed but only says how to open the page in a browser:
   * WeChat blocks Alipay's pages and links. */
  function alipayBlocked(channel) {
    return channel === 'alipay' && CLIENT === 'wechat' && methodFor(channel) === '' && !!buy.methods;
  }

  const currentProduct = () => (buy.products || []).find((p) => p.id === buy.productId) || null;

  function renderBuy() {
    const list = $('product-list');
    const msg = $('products-msg');
    list.textContent = '';
    msg.hidden = true;
    if (buy.loadError) {
      msg.hidden = false;
      msg.textContent = t('productsFailed', { msg: buy.loadError });
    } else if (buy.products && !buy.products.length) {
      msg.hidden = false;
      msg.textContent = t('noProducts');
    }
    for (const p of buy.products || []) {
      const b = el('button', {
        type: 'button', class: 'product', 'data-testid': 'product-' + p.id,
        'aria-pressed': p.id === buy.productId ? 'true' : 'false',
      },
      el('span', { class: 'product-name', text: p.name }),
      el('span', { class: 'product-credits', text: p.plan
        ? t('planProduct', { days: p.plan.days, daily: p.plan.daily_credits })
        : t('credits', { n: p.credits }) }),
      el('span', { class: 'product-price', text: formatPrice(p.price_fen) }));
      b.addEventListener('click', () => { buy.productId = p.id; renderBuy(); ensureOrder(); });
      list.append(b);
    }
    const chBox = $('channel-box');
    chBox.hidden = !buy.products || !buy.products.length || !buy.channels.length;
    const chList = $('channel-list');
    chList.textContent = '';
    for (const c of buy.channels) {
      const b = el('button', {
        type: 'button', class: 'channel channel-' + c, 'data-testid': 'channel-' + c,
        'aria-pressed': c === buy.channel ? 'true' : 'false',
      }, el('span', { class: 'channel-mark', 'aria-hidden': 'true' }), t('ch_' + c));
      b.addEventListener('click', () => {
        if (buy.channel === c && buy.order) return;
        buy.channel = c;
        renderBuy();
        if (buy.productId) ensureOrder();
      });
      chList.append(b);
    }
    renderOrder();
  }

  /** Sets text only when it changes: the status line is a live region. */
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function renderOrder() {
    const box = $('order-box');
    const status = $('order-status');
    const img = $('order-qr');
    const hint = $('order-hint');
    const expiry = $('order-expiry');
    const open = $('order-open');
    const renew = $('order-renew');
    const pay = $('order-pay');
    const o = buy.phase === 'order' ? buy.order : null;
    const blocked = alipayBlocked(buy.channel);
    const needChannel = buy.phase === 'idle' && buy.productId && !buy.channel;
    const qrMethod = o ? WX.isQrMethod(o.method) : WX.isQrMethod(methodFor(buy.channel));
    $('alipay-hint').hidden = !blocked;
    box.hidden = blocked || (buy.phase === 'idle' && !needChannel);
    box.classList.toggle('paid', !!(o && o.status === 'credited'));
    open.hidden = true;
    renew.hidden = true;
    pay.hidden = true;
    renew.textContent = qrMethod ? t('orderRenew') : t('payAgain');
    setText(hint, '');
    setText(expiry, '');
    img.hidden = true;
    $('order-qr-frame').hidden = !qrMethod || !(buy.phase === 'creating' || (o && o.status === 'created'));
    if (needChannel) {
      status.dataset.status = 'pending';
      setText(status, t('pickChannel'));
      return;
    }
    if (buy.phase === 'ready') {
      const p = currentProduct();
      const price = formatPrice(p ? p.price_fen : 0);
      status.dataset.status = 'ready';
      setText(status, t('payTotal', { price }));
      setText(hint, methodHint(methodFor(buy.channel)));
      pay.textContent = t('payNow', { price });
      pay.hidden = false;
      return;
    }
    if (buy.phase === 'authorizing') {
      status.dataset.status = 'creating';
      setText(status, t('payNeedsWechat'));
      return;
    }
    if (buy.phase === 'checking') {
      status.dataset.status = 'creating';
      setText(status, t('orderChecking'));
      return;
    }
    if (buy.phase === 'missing') {
      status.dataset.status = 'failed';
      setText(status, buy.failMsg ? t('errGeneric', { msg: buy.failMsg }) : t('orderNotFound'));
      return;
    }
    if (buy.phase === 'creating') {
      status.dataset.status = 'creating';
      const m = methodFor(buy.channel);
      setText(status, qrMethod ? t('orderCreating') : m === 'jsapi' ? t('orderOpening') : t('orderLeaving', { channel: t('ch_' + buy.channel) }));
      return;
    }
    if (buy.phase === 'failed') {
      status.dataset.status = 'failed';
      setText(status, t(qrMethod ? 'orderFailed' : 'payStartFailed', { msg: buy.failMsg }));
      renew.hidden = false;
      return;
    }
    if (!o) return;
    status.dataset.status = o.status;
    const price = formatPrice(o.amount_fen);
    img.alt = t('qrAlt', { price });
    if (o.status === 'created' && !qrMethod) {
      renderPayState(o, price);
    } else if (o.status === 'created') {
      const left = o.expires_at - Math.floor(Date.now() / 1000);
      if (left > 0) {
        setText(status, t('orderWaiting', { price }));
        setText(expiry, t('orderExpiresIn', { time: Math.floor(left / 60) + ':' + pad2(left % 60) }));
        img.hidden = !buy.qrUrl || buy.qrFor !== o.id;
      } else {
        // Still polled: a payment made at the last second is credited all the same.
        setText(status, t('orderTimeUp'));
        renew.hidden = false;
      }
      if (buy.qrError) setText(hint, t('qrFailed'));
      else if (o.channel === 'wechat') setText(hint, IN_WECHAT ? t('hintWechatInApp') : t('hintWechat'));
      else {
        setText(hint, t('hintAlipay'));
        // On a phone the Alipay code URL opens the Alipay app directly.
        const href = IS_PHONE && !IN_WECHAT ? safeUrl(o.code_url) : null;
        if (href) { open.href = href; open.textContent = t('openAlipay'); open.hidden = false; }
      }
    } else if (o.status === 'credited') {
      if (o.plan) {
        refreshMe().then(() => {
          const p = state.me && state.me.plan;
          setText(status, p ? t('orderPlan', { name: p.name, end: p.end }) : t('orderCredited', { n: 0 }));
        });
      } else {
        setText(status, t('orderCredited', { n: o.credits }));
      }
    } else if (o.status === 'closed') {
      setText(status, t('orderClosed'));
      renew.hidden = false;
    } else if (o.status === 'refunded') {
      setText(status, t('orderRefunded'));
    } else {
      setText(status, String(o.status));
    }
  }

  /** What happens with an order paid by leaving the page or in WeChat's cashier. */
  function renderPayState(o, price) {
    const status = $('order-status');
    const hint = $('order-hint');
    const pay = $('order-pay');
    const left = o.expires_at - Math.floor(Date.now() / 1000);
    if (left <= 0) {
      // Still polled: a payment made at the last second is credited all the same.
      setText(status, t('orderTimeUp'));
      $('order-renew').hidden = false;
      return;
    }
    setText($('order-expiry'), t('orderExpiresIn', { time: Math.floor(left / 60) + ':' + pad2(left % 60) }));
    const st = buy.payState;
    if (st === 'invoking') setText(status, t('orderOpening'));
    else if (st === 'leaving') setText(status, t('orderLeaving', { channel: t('ch_' + o.channel) }));
    else if (st === 'ok' || st === 'returned') setText(status, t('orderConfirming'));
    else setText(status, t('orderWaiting', { price }));
    if (st === 'cancel') setText(hint, t('payCancelled'));
    else if (st === 'fail') setText(hint, t('payFailed', { msg: buy.payMsg || '' }));
    // Back from the cashier without a confirmed payment, or out of WeChat's: pay again.
    if (st === 'cancel' || st === 'fail' || st === 'returned' || st === '') {
      pay.textContent = st === '' ? t('payNow', { price }) : t('payAgain');
      pay.hidden = false;
    }
  }

  function methodHint(method) {
    return method === 'jsapi' ? t('hintJsapi') : method === 'h5' ? t('hintH5')
      : method === 'wap' || method === 'page' ? t('hintWap') : '';
  }

  /** Shows a payable order for the chosen product and channel, creating one if needed.
   * Methods that leave the page (or open WeChat's cashier) wait for the pay button. */
  function ensureOrder() {
    if (!buy.productId || !buy.channel || alipayBlocked(buy.channel)) { renderOrder(); return; }
    const key = buy.productId + '|' + buy.channel;
    if (buy.phase === 'creating' && buy.creating === key) return; // already on its way
    if (!WX.isQrMethod(methodFor(buy.channel))) {
      stopPolling();
      buy.seq++;
      buy.order = null;
      buy.phase = 'ready';
      renderOrder();
      return;
    }
    const cached = buy.orders.get(key);
    const now = Math.floor(Date.now() / 1000);
    if (cached && cached.status === 'created' && cached.expires_at - now > 30) {
      showOrder(cached);
      return;
    }
    createOrder();
  }

  /** The pay button: a new order (or the one already made for this pack), or paying again. */
  function payClicked() {
    if (buy.phase === 'order' && buy.order && buy.order.status === 'created') {
      continuePay(buy.order);
      return;
    }
    const cached = buy.orders.get(buy.productId + '|' + buy.channel);
    const now = Math.floor(Date.now() / 1000);
    if (cached && cached.status === 'created' && cached.expires_at - now > 30) {
      showOrder(cached, true);
      continuePay(cached);
      return;
    }
    createOrder();
  }

  /** Pays for `o` by its method: WeChat's cashier (JSAPI) or off to WeChat Pay / Alipay. */
  function startPayment(o) {
    if (o.method === 'jsapi') { payJsapi(o); return; }
    const base = safeUrl(o.pay_url);
    if (!base) {
      buy.payState = 'fail';
      buy.payMsg = t('payNoMethod');
      renderOrder();
      return;
    }
    buy.payState = 'leaving';
    renderOrder();
    // WeChat Pay H5 returns to `redirect_url` whether or not the user paid: the order page
    // then asks the server. Alipay's return_url is set (and signed) by the server.
    location.assign(o.method === 'h5' ? WX.h5PayUrl(base, location.origin, o.id) : base);
  }

  /** Opens WeChat's cashier. Its "ok" only means the user finished there: the order is paid
   * when the server has the verified notification, which the poll shows. */
  async function payJsapi(o) {
    if (!o.jsapi) {
      buy.payState = 'fail';
      buy.payMsg = t('payNoMethod');
      renderOrder();
      return;
    }
    buy.payState = 'invoking';
    renderOrder();
    const r = await WX.payInWechat(o.jsapi);
    if (!buy.order || buy.order.id !== o.id) return;
    buy.payState = r.result;
    buy.payMsg = r.msg;
    renderOrder();
    if (r.result === 'ok') pollSoon(300);
  }

  /** Pays again for an order still open: JSAPI gets fresh parameters (a new timestamp and
   * signature for the same prepay), the others go back to their cashier. */
  async function continuePay(o) {
    let fresh = o;
    if (o.method === 'jsapi') {
      try {
        fresh = await api('/api/orders/' + encodeURIComponent(o.id));
      } catch (e) {
        if (e.status === 401) return;
        buy.payState = 'fail';
        buy.payMsg = e.message;
        renderOrder();
        return;
      }
      if (!buy.order || buy.order.id !== o.id) return;
      buy.order = fresh;
      buy.orders.set(fresh.product_id + '|' + fresh.channel, fresh);
      if (fresh.status !== 'created') { renderOrder(); return; }
    }
    startPayment(fresh);
  }

  const RESUME_KEY = 'chatrelay.resumeBuy';

  /** JSAPI needs the user's openid under the merchant's AppID: run web authorization first,
   * then come back and continue this purchase (once: a second refusal is shown, not looped). */
  function payNeedsWechat(loginUrl) {
    let tried = false;
    try { tried = !!window.sessionStorage.getItem(RESUME_KEY); } catch (_) { tried = true; }
    if (tried || !loginUrl) return false;
    try {
      window.sessionStorage.setItem(RESUME_KEY, JSON.stringify({ product: buy.productId, channel: buy.channel }));
    } catch (_) { return false; }
    buy.phase = 'authorizing';
    renderOrder();
    location.assign(WX.withNext(loginUrl, location.pathname + location.search));
    return true;
  }

  /** After the authorization detour: the purchase the user had started, if any. */
  function takeResume() {
    let v = null;
    try {
      v = JSON.parse(window.sessionStorage.getItem(RESUME_KEY) || 'null');
      window.sessionStorage.removeItem(RESUME_KEY);
    } catch (_) { v = null; }
    return v && typeof v.product === 'string' && typeof v.channel === 'string' ? v : null;
  }

  function resumePurchase() {
    const r = buy.resume;
    buy.resume = null;
    if (!(buy.products || []).some((p) => p.id === r.product) || !buy.channels.includes(r.channel)) return;
    buy.productId = r.product;
    buy.channel = r.channel;
    renderBuy();
    createOrder();
  }

  /** `/?order=ID`: back from WeChat Pay H5 or Alipay's cashier. */
  function orderInQuery() {
    const id = new URLSearchParams(location.search).get('order');
    return id && /^[A-Za-z0-9_-]{1,64}$/.test(id) ? id : null;
  }

  /** Forgets the order in the address, with the rest of the query (Alipay adds its signed
   * return parameters: nothing the page needs, nothing to bookmark). */
  function dropOrderQuery() {
    if (!orderInQuery()) return;
    history.replaceState(null, '', location.pathname + location.hash);
  }

  /** Shows the order the user came back for and polls it until it is settled. */
  async function resumeOrder(id) {
    openBuy();
    stopPolling();
    const seq = ++buy.seq;
    buy.phase = 'checking';
    renderOrder();
    let o;
    try {
      o = await api('/api/orders/' + encodeURIComponent(id));
    } catch (e) {
      if (seq !== buy.seq || e.status === 401) return;
      buy.phase = 'missing';
      buy.failMsg = e.status === 404 ? '' : e.message;
      renderOrder();
      dropOrderQuery();
      return;
    }
    if (seq !== buy.seq) return;
    buy.productId = o.product_id;
    buy.channel = o.channel;
    buy.orders.set(o.product_id + '|' + o.channel, o);
    buy.payState = 'returned';
    showOrder(o, true);
    renderBuy();
  }

  async function createOrder() {
    const seq = ++buy.seq;
    stopPolling();
    buy.order = null;
    buy.phase = 'creating';
    renderOrder();
    const productId = buy.productId;
    const channel = buy.channel;
    buy.creating = productId + '|' + channel;
    const body = { product_id: productId, channel };
    const method = methodFor(channel);
    if (method) body.method = method;
    try {
      const o = await api('/api/orders', { body });
      if (seq !== buy.seq) return;
      buy.orders.set(productId + '|' + channel, o);
      try { window.sessionStorage.removeItem(RESUME_KEY); } catch (_) { /* nothing to do */ }
      showOrder(o);
    } catch (e) {
      if (seq !== buy.seq) return;
      if (e.status === 409 && e.code === 'openid_required' && payNeedsWechat(e.info.login_url)) return;
      buy.phase = 'failed';
      buy.failMsg = e.message;
      renderOrder();
    }
  }

  /** Puts `o` on screen and polls it. A new order (not `resumed`) paid off the page starts
   * its payment right away. */
  function showOrder(o, resumed) {
    buy.order = o;
    buy.phase = 'order';
    buy.seq++; // an order still being created for an earlier click is no longer wanted
    buy.qrError = false;
    if (!resumed) buy.payState = '';
    renderOrder();
    if (o.status === 'created') {
      if (WX.isQrMethod(o.method)) loadQr(o);
      else if (!resumed) startPayment(o);
      pollSoon(2000);
    } else if (resumed) {
      dropOrderQuery();
    }
    // On a phone the code is below the fold: bring it into view.
    const box = $('order-box');
    if (box.scrollIntoView) box.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  }

  /** The QR endpoint needs the Authorization header, so an <img src> cannot load it:
   * fetch it and show it through a blob: URL. */
  async function loadQr(o) {
    if (buy.qrFor === o.id && buy.qrUrl) { $('order-qr').src = buy.qrUrl; renderOrder(); return; }
    try {
      const res = await fetch(o.qr_svg || '/api/orders/' + encodeURIComponent(o.id) + '/qr.svg', {
        headers: { Authorization: 'Bearer ' + state.token },
        cache: 'no-store',
      });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      const blob = await res.blob();
      if (!buy.order || buy.order.id !== o.id) return;
      if (buy.qrUrl) URL.revokeObjectURL(buy.qrUrl);
      buy.qrUrl = URL.createObjectURL(blob.type === 'image/svg+xml' ? blob : new Blob([blob], { type: 'image/svg+xml' }));
      buy.qrFor = o.id;
      $('order-qr').src = buy.qrUrl;
    } catch (_) {
      if (buy.order && buy.order.id === o.id) buy.qrError = true;
    }
    renderOrder();
  }

  function pollSoon(delay) {
    clearTimeout(buy.pollTimer);
    buy.pollTimer = setTimeout(pollOrder, delay);
    // The countdown ticks while an order is on screen.
    if (!buy.tickTimer) buy.tickTimer = setInterval(() => { if (buy.phase === 'order') renderOrder(); }, 1000);
  }

  function stopPolling() {
    clearTimeout(buy.pollTimer);
    clearInterval(buy.tickTimer);
    buy.pollTimer = 0;
    buy.tickTimer = 0;
  }

  async function pollOrder() {
    const o = buy.order;
    if (!o || buy.phase !== 'order' || $('buy-panel').hidden) return;
    let fresh;
    try {
      fresh = await api('/api/orders/' + encodeURIComponent(o.id));
    } catch (e) {
      // Transient trouble: try again a little later (401 already went to the login view).
      if (e.status !== 401 && buy.order === o) pollSoon(4000);
      return;
    }
    if (buy.order !== o || $('buy-panel').hidden) return;
    buy.order = fresh;
    buy.orders.set(fresh.product_id + '|' + fresh.channel, fresh);
    renderOrder();
    if (fresh.status === 'created') { pollSoon(2000); return; }
    stopPolling();
    dropOrderQuery();
    if (fresh.status === 'credited') {
      hideBanner();
      refreshMe();
    }
  }

  // ---------------------------------------------------------------- events

  function bindEvents() {
    $('boot-retry').addEventListener('click', boot);
    $('lang-toggle').addEventListener('click', toggleLang);
    $('login-form').addEventListener('submit', submitCode);
    $('login-code').addEventListener('input', (e) => {
      const shown = showCode(normalizeCode(e.target.value));
      if (shown !== e.target.value) e.target.value = shown;
      if (loginErrorKey) loginError(null);
    });
    $('guest-start').addEventListener('click', startGuest);
    $('tab-scan').addEventListener('click', () => selectLoginTab('scan'));
    $('tab-code').addEventListener('click', () => selectLoginTab('code'));
    $('scan-refresh').addEventListener('click', () => { scan.ticket = null; startScan(); });
    $('token-form').addEventListener('submit', submitToken);

    $('composer').addEventListener('submit', (e) => { e.preventDefault(); send(); });
    const input = $('chat-input');
    input.addEventListener('keydown', (e) => {
      // Enter while an IME is composing (Chinese input) confirms the candidate, not send.
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        const conv = currentConv();
        if (!(conv && state.streams.has(conv.id))) send();
      }
    });
    input.addEventListener('input', autosize);
    $('stop').addEventListener('click', stopCurrent);
    $('new-chat').addEventListener('click', () => newChat(true));
    $('model-select').addEventListener('change', (e) => writeStore(MODEL_KEY, e.target.value));
    $('logout').addEventListener('click', () => signOut('loggedOut'));
    $('account-open').addEventListener('click', openAccount);
    $('account-open-2').addEventListener('click', openAccount);
    $('buy-open').addEventListener('click', openBuy);
    $('account-buy').addEventListener('click', openBuy);
    $('redeem-form').addEventListener('submit', submitRedeem);
    $('answers-more').addEventListener('click', () => loadAnswers(true));
    $('error-buy').addEventListener('click', openBuy);
    $('error-close').addEventListener('click', hideBanner);
    $('order-renew').addEventListener('click', () => { buy.orders.delete(buy.productId + '|' + buy.channel); createOrder(); });
    $('order-pay').addEventListener('click', payClicked);
    $('menu-open').addEventListener('click', openDrawer);
    $('sidebar-close').addEventListener('click', closeDrawer);
    $('scrim').addEventListener('click', closeDrawer);

    for (const panel of document.querySelectorAll('.sheet')) {
      panel.addEventListener('click', (e) => {
        // A click on the backdrop or a close button closes the sheet.
        if (e.target === panel || e.target.closest('[data-close]')) closePanel(panel.id);
      });
    }

    // Copy buttons live inside re-rendered markdown: one delegated listener.
    $('thread').addEventListener('click', async (e) => {
      const btn = e.target.closest('[data-copy-code], [data-copy-msg]');
      if (!btn) return;
      let text = '';
      if (btn.hasAttribute('data-copy-code')) {
        const code = btn.closest('.code-block').querySelector('code');
        text = code ? code.textContent : '';
      } else {
        const conv = currentConv();
        const node = btn.closest('.msg');
        const idx = Array.prototype.indexOf.call($('thread').children, node);
        text = conv && conv.messages[idx] ? conv.messages[idx].content : '';
      }
      const ok = await copyText(text);
      btn.textContent = ok ? t('copied') : t('copyFailed');
      announce(btn.textContent);
      setTimeout(() => { if (document.contains(btn)) btn.textContent = t('copy'); }, 1500);
    });

    document.addEventListener('keydown', (e) => {
      if (e.key !== 'Escape') return;
      if (!$('buy-panel').hidden) closePanel('buy-panel');
      else if (!$('account-panel').hidden) closePanel('account-panel');
      else if ($('chat-view').classList.contains('drawer-open')) closeDrawer();
      else {
        const conv = currentConv();
        if (conv && state.streams.has(conv.id) && document.activeElement === $('chat-input')) stopCurrent();
      }
    });

    window.addEventListener('hashchange', () => {
      if (location.hash === '#buy') openBuy();
    });
    window.addEventListener('resize', () => { if (!isNarrow()) closeDrawer(); });
    window.addEventListener('pageshow', (e) => {
      if (!e.persisted || buy.payState !== 'leaving') return;
      buy.payState = 'returned';
      renderOrder();
      pollSoon(0);
    });
    // Back from a payment app or another tab: the balance may have changed.
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState !== 'visible' || state.view !== 'chat') return;
      refreshMe();
      if (!$('buy-panel').hidden && buy.order && buy.order.status === 'created') pollSoon(0);
    });
  }

  // ---------------------------------------------------------------- boot

  async function boot() {
    showView('boot');
    $('boot-text').textContent = t('loading');
    $('boot-retry').hidden = true;
    try {
      if (!WX) throw new Error('wechat.js did not load');
      state.config = await api('/api/config', { auth: false });
    } catch (e) {
      $('boot-text').textContent = t('loadFailed');
      $('boot-retry').hidden = false;
      return;
    }
    setTitle();
    applyLang();
    const handoff = takeLoginHandoff();
    if (handoff && await redeemHandoff(handoff)) return;
    if (state.token) {
      enterChat();
      if (handoffError) toast(t(handoffError.key, { msg: handoffError.msg || '' }));
      handoffError = null;
    } else if (handoff || !autoWechatLogin()) {
      showLogin();
    }
  }

  function start() {
    bindEvents();
    applyLang();
    boot();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
