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
      loginUnconfigured: '网站还没有配置登录方式。如果管理员给了你 API 密钥，请在下方粘贴使用。',
      tokenToggle: '使用 API 密钥登录',
      tokenLabel: 'API 密钥',
      tokenPlaceholder: 'sk-…',
      tokenSubmit: '使用',
      tokenEmpty: '请粘贴 API 密钥',
      tokenInvalid: 'API 密钥无效或已过期',
      expired: '登录已过期，请重新登录',
      loggedOut: '已退出登录',
      networkError: '网络错误，请检查网络后重试',
      serverError: '服务暂时不可用，请稍后再试',
      convHeading: '历史对话',
      convEmpty: '还没有对话',
      newChat: '新对话',
      deleteConv: '删除对话「{title}」',
      renameConv: '重命名对话「{title}」',
      renameFailed: '重命名失败，请稍后再试',
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
      userLine: '{name} · 用户号 {uid}',
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
      answerTokens: '输入 {p} · 输出 {c} 词元',
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
      // Conversations, editing, export, the model picker (issue 26)
      edit: '编辑',
      editLabel: '修改问题',
      editSave: '保存并发送',
      cancel: '取消',
      export: '导出为 Markdown',
      exported: '已导出对话',
      exportedAt: '导出于 {time}',
      copySuffix: '（副本）',
      convConflict: '这个对话在其他设备上有更新，已载入最新内容；本机的版本另存为副本。',
      convTooLarge: '对话太长，无法同步到服务器，只保存在本机。',
      convLoadFailed: '对话加载失败，请检查网络后重试',
      convGone: '这个对话已不存在（可能已在其他设备上删除或清空），请新开一个对话',
      deleteFailed: '删除失败，请稍后再试',
      deletedPlatform: '已删除对话，对应的对话记忆已清空',
      platformNote: '这是你在{where}上的对话，在这里继续会接着之前的上下文。',
      src_wechat_mp: '公众号对话',
      src_wecom: '企业微信对话',
      src_telegram: 'Telegram 对话',
      src_zsxq: '知识星球对话',
      src_other: '其他平台对话',
      priceEach: '{n} 额度/条',
      pricePer1k: '+{n}/千词元',
      modelPaidOnly: '付费用户',
      modelVision: '识图',
      modelPicked: '已选择模型 {model}',
      guestName: '试用用户',
      userOf: '{where}用户',
      platform_web: '网页',
      platform_api: 'API',
      platform_mp: '公众号',
      platform_wecom: '企业微信',
      platform_zsxq: '知识星球',
      platform_tg: 'Telegram',
      reason_guest: '试用赠送',
      reason_answer: '回答（{model}）',
      reason_undelivered: '回答未送达，退还',
      reason_order: '订单 {id}：{name}',
      reason_refund: '订单 {id} 退款：{why}',
      reason_code: '兑换码 {id}',
      reason_plan: '（会员 {name} {start} 至 {end}）',
      reason_planEnded: '（会员 {name} 已结束）',
      // The web API's errors by their code (`error.code`), per area of the API first
      // (`err_<area>_<code>`, the area being the path's part after /api/), then for any.
      err_bad_code: '验证码错误或已过期',
      err_invalid_api_key: '登录已过期，请重新登录',
      err_model_not_found: '这个模型已不可用，请换一个模型',
      err_throttled: '尝试次数过多，请稍后再试',
      err_unavailable: '服务暂时不可用，请稍后再试',
      err_bad_request: '请求格式不对，请刷新页面后再试',
      err_not_found: '没有找到',
      err_guest_off: '未开放试用',
      err_unknown_product: '没有这个商品',
      err_method_unavailable: '这个支付方式暂不可用',
      err_channel_unavailable: '这个支付方式在这里不可用',
      err_openid_required: '请先在微信中授权登录，再用微信支付',
      err_provider_error: '支付服务暂时不可用，请稍后再试',
      err_no_code: '这个订单没有二维码',
      err_qr_failed: '二维码生成失败',
      err_scan_login_off: '没有开通微信扫码登录',
      err_expired: '已过期，请刷新',
      err_too_large: '对话太长了，请新开一个对话',
      err_conflict: '对话已在其他设备上更改',
      err_platform_conversation: '平台上的对话不能这样修改',
      err_web_conversation: '这个对话不是平台上的对话',
      err_orders_not_found: '没有这个订单',
      err_conversations_not_found: '没有这个对话',
      err_login_expired: '二维码已过期，请刷新',
      err_redeem_throttled: '兑换码错误次数过多，请稍后再试',
      err_redeem_malformed: '兑换码格式不对：应为 16 位字母数字，如 XXXX-XXXX-XXXX-XXXX',
      err_redeem_unknown_code: '兑换码不存在，请核对后再试',
      err_redeem_already_used: '这个兑换码已被使用',
      err_redeem_revoked: '这个兑换码已作废',
      err_redeem_expired: '这个兑换码已过期',
      err_redeem_plan_unavailable: '这个会员兑换码无效，请联系客服',
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
      renameConv: 'Rename conversation “{title}”',
      renameFailed: 'Renaming failed; try again later',
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
      // Conversations, editing, export, the model picker (issue 26)
      edit: 'Edit',
      editLabel: 'Edit the question',
      editSave: 'Save and send',
      cancel: 'Cancel',
      export: 'Export as Markdown',
      exported: 'Conversation exported',
      exportedAt: 'Exported on {time}',
      copySuffix: ' (copy)',
      convConflict: 'This conversation changed on another device: the latest version is shown, and this device’s version is kept as a copy.',
      convTooLarge: 'This conversation is too long to sync; it is kept in this browser only.',
      convLoadFailed: 'Could not load the conversation; check your connection and try again',
      convGone: 'This conversation no longer exists (deleted or cleared elsewhere); start a new one',
      deleteFailed: 'Could not delete it, please try again later',
      deletedPlatform: 'Conversation deleted, and its memory cleared',
      platformNote: 'This conversation started on {where}; continuing here keeps its context.',
      src_wechat_mp: 'Official Account chat',
      src_wecom: 'WeCom chat',
      src_telegram: 'Telegram chat',
      src_zsxq: 'zsxq chat',
      src_other: 'Chat on another platform',
      priceEach: '{n} credits/message',
      pricePer1k: '+{n} per 1K tokens',
      modelPaidOnly: 'Paid users',
      modelVision: 'Images',
      modelPicked: 'Model {model} selected',
      guestName: 'Guest',
      userOf: '{where} user',
      platform_web: 'Web',
      platform_api: 'API',
      platform_mp: 'Official Account',
      platform_wecom: 'WeCom',
      platform_zsxq: 'zsxq',
      platform_tg: 'Telegram',
      reason_guest: 'Trial credits',
      reason_answer: 'Answer ({model})',
      reason_undelivered: 'Answer not delivered, refunded',
      reason_order: 'Order {id}: {name}',
      reason_refund: 'Refund of order {id}: {why}',
      reason_code: 'Redemption code {id}',
      reason_plan: ' (membership {name} {start} to {end})',
      reason_planEnded: ' (membership {name} ended)',
      err_bad_code: 'Wrong or expired code',
      err_invalid_api_key: 'Your session has expired; please log in again',
      err_model_not_found: 'This model is no longer available; pick another',
      err_throttled: 'Too many attempts; try again later',
      err_unavailable: 'The service is unavailable; try again in a moment',
      err_bad_request: 'The request was not understood; reload the page and try again',
      err_not_found: 'Not found',
      err_guest_off: 'Trying without an account is not open',
      err_unknown_product: 'No such product',
      err_method_unavailable: 'This payment method is not available right now',
      err_channel_unavailable: 'This payment method is not available here',
      err_openid_required: 'Log in through WeChat first to pay with WeChat Pay',
      err_provider_error: 'The payment service is unavailable; try again later',
      err_no_code: 'This order has no QR code',
      err_qr_failed: 'The QR code could not be made',
      err_scan_login_off: 'Logging in by scanning is not enabled',
      err_expired: 'Expired; refresh and try again',
      err_too_large: 'The conversation is too long; start a new one',
      err_conflict: 'The conversation changed on another device',
      err_platform_conversation: 'A chat platform conversation cannot be changed this way',
      err_web_conversation: 'This conversation is not a chat platform conversation',
      err_orders_not_found: 'No such order',
      err_conversations_not_found: 'No such conversation',
      err_login_expired: 'The QR code expired; refresh it',
      err_redeem_throttled: 'Too many wrong codes; try again later',
      err_redeem_malformed: 'Not a redemption code: 16 letters and digits, like XXXX-XXXX-XXXX-XXXX',
      err_redeem_unknown_code: 'No such code; check it and try again',
      err_redeem_already_used: 'This code has already been used',
      err_redeem_revoked: 'This code was revoked',
      err_redeem_expired: 'This code has expired',
      err_redeem_plan_unavailable: 'This membership code is not valid; contact support',
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

  // ---------------------------------------------------------------- math (TeX -> MathML)
  // A small TeX subset rendered as MathML, which browsers draw natively (no fonts or
  // scripts to load). Everything from the TeX source is escaped; only fixed MathML tags
  // are produced. Unknown commands are shown as their text, never dropped.

  const MATH_SYMBOLS = {
    alpha: 'α', beta: 'β', gamma: 'γ', delta: 'δ', epsilon: 'ϵ', varepsilon: 'ε', zeta: 'ζ', eta: 'η',
    theta: 'θ', vartheta: 'ϑ', iota: 'ι', kappa: 'κ', lambda: 'λ', mu: 'μ', nu: 'ν', xi: 'ξ', pi: 'π',
    varpi: 'ϖ', rho: 'ρ', varrho: 'ϱ', sigma: 'σ', varsigma: 'ς', tau: 'τ', upsilon: 'υ', phi: 'ϕ',
    varphi: 'φ', chi: 'χ', psi: 'ψ', omega: 'ω', Gamma: 'Γ', Delta: 'Δ', Theta: 'Θ', Lambda: 'Λ',
    Xi: 'Ξ', Pi: 'Π', Sigma: 'Σ', Upsilon: 'Υ', Phi: 'Φ', Psi: 'Ψ', Omega: 'Ω',
    infty: '∞', partial: '∂', nabla: '∇', hbar: 'ℏ', ell: 'ℓ', emptyset: '∅', varnothing: '∅',
    angle: '∠', degree: '°', prime: '′', aleph: 'ℵ', Re: 'ℜ', Im: 'ℑ',
  };
  const MATH_OPS = {
    cdot: '⋅', times: '×', div: '÷', pm: '±', mp: '∓', ast: '∗', star: '⋆', circ: '∘', bullet: '∙',
    le: '≤', leq: '≤', ge: '≥', geq: '≥', ne: '≠', neq: '≠', approx: '≈', equiv: '≡', sim: '∼',
    simeq: '≃', cong: '≅', propto: '∝', ll: '≪', gg: '≫', in: '∈', notin: '∉', ni: '∋',
    subset: '⊂', supset: '⊃', subseteq: '⊆', supseteq: '⊇', cup: '∪', cap: '∩', setminus: '∖',
    wedge: '∧', land: '∧', vee: '∨', lor: '∨', neg: '¬', lnot: '¬', forall: '∀', exists: '∃',
    to: '→', rightarrow: '→', leftarrow: '←', gets: '←', leftrightarrow: '↔', Rightarrow: '⇒',
    Leftarrow: '⇐', Leftrightarrow: '⇔', implies: '⟹', iff: '⟺', mapsto: '↦', uparrow: '↑',
    downarrow: '↓', perp: '⊥', parallel: '∥', mid: '∣', oplus: '⊕', otimes: '⊗',
    ldots: '…', cdots: '⋯', vdots: '⋮', ddots: '⋱', dots: '…', therefore: '∴', because: '∵',
    langle: '⟨', rangle: '⟩', lfloor: '⌊', rfloor: '⌋', lceil: '⌈', rceil: '⌉', vert: '|', Vert: '‖',
    '{': '{', '}': '}', '|': '‖', lbrace: '{', rbrace: '}',
  };
  /** Big operators: limits go under and over in display math. */
  const MATH_BIG = {
    sum: '∑', prod: '∏', coprod: '∐', int: '∫', iint: '∬', iiint: '∭', oint: '∮',
    bigcup: '⋃', bigcap: '⋂', bigoplus: '⨁', bigotimes: '⨂',
  };
  const MATH_FUNCS = 'sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln lg exp lim liminf limsup max min sup inf det dim ker deg gcd arg Pr mod'.split(' ');
  const MATH_LIMIT_FUNCS = new Set(['lim', 'liminf', 'limsup', 'max', 'min', 'sup', 'inf', 'det', 'gcd', 'Pr']);
  const MATH_ACCENTS = { hat: '^', widehat: '^', bar: '¯', overline: '¯', vec: '→', dot: '˙', ddot: '¨', tilde: '~', widetilde: '~' };
  const MATH_SPACES = { ',': '0.1667em', ':': '0.2222em', '>': '0.2222em', ';': '0.2778em', '!': '-0.1667em', quad: '1em', qquad: '2em', ' ': '0.25em', enspace: '0.5em' };
  const MATH_ENVS = { matrix: ['', ''], pmatrix: ['(', ')'], bmatrix: ['[', ']'], Bmatrix: ['{', '}'], vmatrix: ['|', '|'], Vmatrix: ['‖', '‖'], cases: ['{', ''], aligned: ['', ''], align: ['', ''], 'align*': ['', ''], array: ['', ''], gathered: ['', ''], split: ['', ''] };

  /** Letters in a font TeX names, as Unicode mathematical alphanumerics (MathML Core only
   * knows mathvariant="normal"). */
  function mathFont(font, text) {
    const bases = { mathbb: [0x1D538, null], mathbf: [0x1D400, 0x1D7CE], mathcal: [0x1D49C, null], mathfrak: [0x1D504, null], boldsymbol: [0x1D400, 0x1D7CE] };
    const holes = { mathbb: { C: 'ℂ', H: 'ℍ', N: 'ℕ', P: 'ℙ', Q: 'ℚ', R: 'ℝ', Z: 'ℤ' }, mathcal: { B: 'ℬ', E: 'ℰ', F: 'ℱ', H: 'ℋ', I: 'ℐ', L: 'ℒ', M: 'ℳ', R: 'ℛ' }, mathfrak: { C: 'ℭ', H: 'ℌ', I: 'ℑ', R: 'ℜ', Z: 'ℨ' } };
    const b = bases[font];
    if (!b) return text;
    let out = '';
    for (const ch of text) {
      const h = holes[font] && holes[font][ch];
      const c = ch.charCodeAt(0);
      if (h) out += h;
      else if (c >= 65 && c <= 90) out += String.fromCodePoint(b[0] + c - 65);
      else if (c >= 97 && c <= 122 && font !== 'mathbb' && font !== 'mathcal') out += String.fromCodePoint(b[0] + 26 + c - 97);
      else if (c >= 48 && c <= 57 && b[1]) out += String.fromCodePoint(b[1] + c - 48);
      else if (c >= 48 && c <= 57 && font === 'mathbb') out += String.fromCodePoint(0x1D7D8 + c - 48);
      else out += ch;
    }
    return out;
  }

  const MATH_MAX_DEPTH = 40;

  /** TeX source to a MathML `<math>` element's HTML (`display` for a block formula). */
  function texToMathml(src, display) {
    const s = String(src);
    let pos = 0;
    let depth = 0;

    const tag = (name, inner, attrs) => '<' + name + (attrs || '') + '>' + inner + '</' + name + '>';
    const mi = (x, normal) => tag('mi', esc(x), normal || [...x].length > 1 ? ' mathvariant="normal"' : '');
    const mo = (x, attrs) => tag('mo', esc(x), attrs);
    const mn = (x) => tag('mn', esc(x));
    const mtext = (x) => tag('mtext', esc(x));
    const row = (items) => (items.length === 1 ? items[0] : tag('mrow', items.join('')));

    function skipSpace() { while (pos < s.length && /\s/.test(s[pos])) pos++; }

    /** The next command name after a backslash (letters, or one other character). */
    function commandName() {
      const m = /^[A-Za-z]+\*?/.exec(s.slice(pos));
      if (m) { pos += m[0].length; return m[0]; }
      return pos < s.length ? s[pos++] : '';
    }

    /** A `{...}` group's raw text (for \text and environment names), or one character. */
    function rawGroup() {
      skipSpace();
      if (s[pos] !== '{') return pos < s.length ? s[pos++] : '';
      let level = 0;
      const start = pos + 1;
      for (; pos < s.length; pos++) {
        if (s[pos] === '\\') { pos++; continue; }
        if (s[pos] === '{') level++;
        else if (s[pos] === '}' && --level === 0) { pos++; return s.slice(start, pos - 1); }
      }
      return s.slice(start);
    }

    /** One argument: a group, a command, or one character. */
    function arg() {
      skipSpace();
      if (s[pos] === '{') { pos++; const r = row(list('}')); return r || row([]); }
      const a = atom();
      return a ? a.html : tag('mrow', '');
    }

    /** An optional `[...]` argument. */
    function optArg() {
      skipSpace();
      if (s[pos] !== '[') return null;
      pos++;
      return row(list(']'));
    }

    /** A delimiter after \left, \right, \big...: its text ('' for "."). */
    function delimiter() {
      skipSpace();
      if (s[pos] === '\\') {
        pos++;
        const name = commandName();
        return MATH_OPS[name] || MATH_SYMBOLS[name] || name;
      }
      const c = pos < s.length ? s[pos++] : '';
      return c === '.' ? '' : c;
    }

    /** An environment body: rows split by \\, cells by &. */
    function environment(name) {
      const rows = [[]];
      let cell = [];
      if (name === 'array') rawGroup(); // column spec
      for (;;) {
        const items = list('&', '\\\\', '\\end');
        cell = row(items);
        rows[rows.length - 1].push(cell);
        if (s.startsWith('&', pos)) { pos += 1; continue; }
        if (s.startsWith('\\\\', pos)) { pos += 2; rows.push([]); continue; }
        if (s.startsWith('\\end', pos)) { pos += 4; rawGroup(); }
        break;
      }
      if (rows.length > 1 && rows[rows.length - 1].length === 1 && rows[rows.length - 1][0] === tag('mrow', '')) rows.pop();
      const left = name === 'cases' || /^align|^split|^gathered/.test(name) ? ' columnalign="left"' : '';
      const table = tag('mtable', rows.map((r) => tag('mtr', r.map((c) => tag('mtd', c)).join(''))).join(''), left);
      const [open, close] = MATH_ENVS[name] || ['', ''];
      if (!open && !close) return table;
      return tag('mrow', (open ? mo(open, ' stretchy="true"') : '') + table + (close ? mo(close, ' stretchy="true"') : ''));
    }

    /** One atom (without scripts): returns { html, big } or null at the end or a closer. */
    function atom() {
      skipSpace();
      if (pos >= s.length) return null;
      const c = s[pos];
      if (c === '{') { pos++; return { html: row(list('}')) || tag('mrow', '') }; }
      if (c === '}' || c === ']' || c === '&') return null;
      if (/[0-9.]/.test(c)) {
        const m = /^(?:\d+(?:\.\d+)?|\.\d+|\.)/.exec(s.slice(pos));
        pos += m[0].length;
        return { html: m[0] === '.' ? mo('.') : mn(m[0]) };
      }
      if (/[A-Za-z]/.test(c)) { pos++; return { html: mi(c) }; }
      if (c === '\\') {
        pos++;
        const name = commandName();
        if (name === '\\') return { html: '' };
        if (name in MATH_SYMBOLS) return { html: mi(MATH_SYMBOLS[name]) };
        if (name in MATH_OPS) return { html: mo(MATH_OPS[name]) };
        if (name in MATH_BIG) return { html: mo(MATH_BIG[name], display ? ' largeop="true" movablelimits="true"' : ''), big: display && !/int$/.test(name) };
        if (MATH_FUNCS.includes(name)) return { html: mi(name, true), big: display && MATH_LIMIT_FUNCS.has(name) };
        if (name in MATH_SPACES) return { html: '<mspace width="' + MATH_SPACES[name] + '"></mspace>' };
        if (name === 'frac' || name === 'dfrac' || name === 'tfrac' || name === 'cfrac') { const a = arg(); return { html: tag('mfrac', a + arg()) }; }
        if (name === 'binom' || name === 'dbinom' || name === 'tbinom') { const a = arg(); return { html: tag('mrow', mo('(') + tag('mfrac', a + arg(), ' linethickness="0"') + mo(')')) }; }
        if (name === 'sqrt') { const n = optArg(); const a = arg(); return { html: n ? tag('mroot', a + n) : tag('msqrt', a) }; }
        if (name === 'text' || name === 'textrm' || name === 'mbox' || name === 'textit' || name === 'textbf') return { html: mtext(rawGroup()) };
        if (name === 'mathrm' || name === 'operatorname' || name === 'operatorname*') return { html: mi(rawGroup().replace(/\s+/g, ''), true) };
        if (name === 'mathit') return { html: arg() };
        if (name in { mathbb: 1, mathbf: 1, mathcal: 1, mathfrak: 1, boldsymbol: 1, bm: 1 }) {
          const text = rawGroup();
          return { html: mi(mathFont(name === 'bm' ? 'boldsymbol' : name, text.replace(/\s+/g, '')), true) };
        }
        if (name in MATH_ACCENTS) { const a = arg(); return { html: tag('mover', a + mo(MATH_ACCENTS[name], ' stretchy="' + (/^(wide|over)/.test(name) ? 'true' : 'false') + '"'), ' accent="true"') }; }
        if (name === 'underline') return { html: tag('munder', arg() + mo('_'), ' accentunder="true"') };
        if (name === 'overbrace' || name === 'underbrace') { const a = arg(); return { html: name === 'overbrace' ? tag('mover', a + mo('⏞')) : tag('munder', a + mo('⏟')) }; }
        if (name === 'left' || name === 'right' || /^[bB]ig+[lr]?$/.test(name)) {
          const d = delimiter();
          return { html: d ? mo(d, name === 'left' || name === 'right' ? ' stretchy="true"' : '') : '' };
        }
        if (name === 'begin') {
          const env = rawGroup();
          if (++depth > MATH_MAX_DEPTH) return { html: mtext('…') };
          const html = environment(env);
          depth--;
          return { html };
        }
        if (name === 'end') { rawGroup(); return { html: '' }; }
        if (name in { displaystyle: 1, textstyle: 1, scriptstyle: 1, limits: 1, nolimits: 1, nonumber: 1, notag: 1 }) return { html: '' };
        if (name === 'not') { const a = atom(); return { html: a ? tag('mrow', a.html + mo('̸')) : '' }; }
        return { html: tag('mtext', esc('\\' + name), ' class="math-unknown"') };
      }
      pos++;
      if (c === '^' || c === '_') return { html: '' }; // a script with nothing before it
      if (c === "'") return { html: mo('′') };
      if (c === '~') return { html: '<mspace width="0.25em"></mspace>' };
      if (/[+\-*/=<>()[\]|,;:!?]/.test(c)) return { html: mo(c === '-' ? '−' : c === '*' ? '∗' : c) };
      return { html: mi(c) };
    }

    /** Atoms with their scripts until `stops` (strings) or the end. */
    function list(...stops) {
      const items = [];
      if (++depth > MATH_MAX_DEPTH) { pos = s.length; depth--; return [mtext('…')]; }
      for (;;) {
        skipSpace();
        if (pos >= s.length) break;
        if (stops.some((x) => s.startsWith(x, pos))) {
          if (stops[0] === '}' || stops[0] === ']') pos += 1;
          break;
        }
        if (stops.length === 0 && (s[pos] === '}' || s[pos] === ']')) { items.push(mo(s[pos++])); continue; }
        if (s[pos] === '&' && stops.indexOf('&') < 0) { pos++; continue; }
        const base = atom();
        if (!base) { if (pos < s.length) items.push(mo(s[pos++])); continue; }
        let sub = null;
        let sup = null;
        for (;;) {
          skipSpace();
          if (s[pos] === '_' && sub === null) { pos++; sub = arg(); } else if (s[pos] === '^' && sup === null) { pos++; sup = arg(); } else if (s[pos] === "'" && sup === null) { pos++; sup = mo('′'); } else break;
        }
        const b = base.html || tag('mrow', '');
        if (sub === null && sup === null) { if (base.html) items.push(base.html); continue; }
        if (base.big) {
          items.push(sub !== null && sup !== null ? tag('munderover', b + sub + sup) : sub !== null ? tag('munder', b + sub) : tag('mover', b + sup));
        } else {
          items.push(sub !== null && sup !== null ? tag('msubsup', b + sub + sup) : sub !== null ? tag('msub', b + sub) : tag('msup', b + sup));
        }
      }
      depth--;
      return items;
    }

    const body = list();
    return '<math class="math"' + (display ? ' display="block"' : '') + '>' + tag('mrow', body.join('')) + '</math>';
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
  // Math comes first: `\\(` is a formula, not an escaped parenthesis. `$...$` needs no space
  // inside its dollars, no digit after, and no backtick or Chinese inside (so "$5 and $10"
  // and "价格 $5，代码 `$x`" stay text).
  const INLINE_TOKENS = new RegExp([
    '\\$\\$([^$]+?)\\$\\$',
    '\\\\\\(([\\s\\S]+?)\\\\\\)',
    '\\\\\\[([\\s\\S]+?)\\\\\\]',
    '\\$([^\\s$`\\u3000-\\u9fff\\uff00-\\uffef](?:[^$\\n`\\u3000-\\u9fff\\uff00-\\uffef]*?[^\\s$`\\u3000-\\u9fff\\uff00-\\uffef])?)\\$(?!\\d)',
    '\\\\([!-\\/:-@\\[-`{-~])',
    '(`+)([^`]|[^`][\\s\\S]*?[^`])\\6(?!`)',
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
    s = s.replace(INLINE_TOKENS, (m, dmath, pmath, bmath, imath, escaped, ticks, code, ialt, iurl, ltext, lurl, angle, bare) => {
      if (dmath !== undefined) return keep(texToMathml(dmath, true));
      if (pmath !== undefined) return keep(texToMathml(pmath, false));
      if (bmath !== undefined) return keep(texToMathml(bmath, true));
      if (imath !== undefined) return keep(texToMathml(imath, false));
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
  const MATH_OPEN_RE = /^ {0,3}(\$\$|\\\[)/;
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
    return FENCE_RE.test(l) || MATH_OPEN_RE.test(l) || HEADING_RE.test(l) || HR_RE.test(l) || QUOTE_RE.test(l) ||
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
      if ((m = MATH_OPEN_RE.exec(line))) {
        // A display formula: `$$ ... $$` or `\[ ... \]`, on one line or several (while
        // streaming the closing one may not have arrived: it runs to the end).
        const closer = m[1] === '$$' ? '$$' : '\\]';
        let rest = line.slice(line.indexOf(m[1]) + 2);
        const tex = [];
        let after = '';
        for (;;) {
          const at = rest.indexOf(closer);
          if (at >= 0) { tex.push(rest.slice(0, at)); after = rest.slice(at + 2); i++; break; }
          tex.push(rest);
          i++;
          if (i >= lines.length) break;
          rest = lines[i];
        }
        out += '<div class="math-block">' + texToMathml(tex.join('\n'), true) + '</div>';
        if (after.trim()) out += tight ? renderInline(after.trim()) : '<p>' + renderInline(after.trim()) + '</p>';
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

  /** Splits markdown still streaming in into `head`, whole blocks that more text cannot
   * change (they end at a blank line outside code and formulas, before a line that starts a
   * new block of its own), and `tail`, the part still growing. Only the tail is rendered
   * again as text arrives, so long answers stay smooth. */
  function splitStable(src) {
    const lines = String(src || '').replace(/\r\n?/g, '\n').split('\n');
    let fence = null;
    let mathCloser = null;
    let cut = 0;
    // The last line may still be incomplete: it never decides a cut on its own.
    for (let i = 0; i < lines.length - 1; i++) {
      const l = lines[i];
      if (fence) { if (fence.test(l)) fence = null; continue; }
      if (mathCloser) { if (l.indexOf(mathCloser) >= 0) mathCloser = null; continue; }
      const f = FENCE_RE.exec(l);
      if (f) {
        fence = new RegExp('^ {0,3}' + (f[1][0] === '`' ? '`' : '~') + '{' + f[1].length + ',}\\s*$');
        continue;
      }
      const mo = MATH_OPEN_RE.exec(l);
      if (mo) {
        const closer = mo[1] === '$$' ? '$$' : '\\]';
        if (l.slice(l.indexOf(mo[1]) + 2).indexOf(closer) < 0) mathCloser = closer;
        continue;
      }
      const next = lines[i + 1];
      if (isBlank(l) && i + 2 < lines.length && !isBlank(next) && !/^\s/.test(next) && !LIST_RE.test(next)) cut = i + 1;
    }
    return { head: lines.slice(0, cut).join('\n'), tail: lines.slice(cut).join('\n') };
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
    if (typeof module !== 'undefined') module.exports = { renderMarkdown, renderInline, texToMathml, splitStable, highlight, createSseParser, formatPrice, esc, safeUrl };
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

  /** The page's own words for a web API error (`err_<area>_<code>`, then `err_<code>`), or
   * null for a code it has none for (the /v1 API's errors: the server words those in the
   * page's language, and some carry the operator's texts). */
  function errorText(path, code) {
    if (!code || !path || !path.startsWith('/api/')) return null;
    const area = path.slice(5).split(/[/?]/)[0];
    for (const key of ['err_' + area + '_' + code, 'err_' + code]) {
      if (key in I18N.zh) return t(key);
    }
    return null;
  }

  /** Reads an error body in either of the server's shapes; the message in the page's
   * language when the page knows the code. */
  async function errorFrom(res, path) {
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
    return new ApiError(res.status, code, errorText(path, code) || message, info);
  }

  /** The server words its errors in the page's language. */
  const acceptLanguage = () => (lang === 'en' ? 'en' : 'zh-CN,zh;q=0.9');

  /** JSON request. With `auth`, a 401 means the token is dead: back to the login view. */
  async function api(path, opts) {
    const o = opts || {};
    const headers = { Accept: 'application/json', 'Accept-Language': acceptLanguage() };
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
      const err = await errorFrom(res, path);
      if (res.status === 401 && o.auth !== false && !o.token) sessionExpired();
      throw err;
    }
    if (res.status === 204) return null;
    return res.json();
  }

  // ---------------------------------------------------------------- conversations storage

  const MAX_CONVS = 200;
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
    state.convs = list.filter((c) => c && typeof c.id === 'string');
    state.currentId = null;
  }

  /** Whether a conversation has anything to list (unopened server ones only have a count). */
  const hasContent = (c) => c.messages.length > 0 || (c.count || 0) > 0;

  /** Saves all conversations; when storage is full, drops the oldest until they fit. */
  function saveConvs() {
    state.convs.sort((a, b) => (b.updated || 0) - (a.updated || 0));
    if (state.convs.length > MAX_CONVS) state.convs.length = MAX_CONVS;
    const list = state.convs.filter(hasContent);
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

  // ---------------------------------------------------------------- conversations on the server
  // Logged in, the list lives on the server (GET/PUT/DELETE /api/conversations), so the
  // phone and the desktop see the same conversations, and the user's conversations on the
  // Official Account, WeCom, Telegram and zsxq are listed too and can be continued here.
  // localStorage stays as the cache shown at once and the fallback offline: a conversation
  // saved while the server could not be reached is `dirty` and saved on the next sync, and
  // conversations from before the server kept them are moved there once (they have no
  // `serverAt`). `serverAt` is the server's `updated_at` of the messages we hold; saving sends
  // it as `base`, so an edit made elsewhere in between is never overwritten.

  /** null: not asked yet; true: the server keeps conversations; false: it does not (an
   * older server): the page keeps them in this browser only. */
  let serverConvs = null;

  /** A conversation from WeChat, WeCom, Telegram or zsxq (continued via the server). */
  const isPlatform = (c) => !!c && !!c.source && c.source !== 'web';

  /** The name shown for a conversation: platform ones by where they happen. */
  function convTitle(c) {
    if (isPlatform(c)) return t('src_' + c.source) === 'src_' + c.source ? t('src_other') : t('src_' + c.source);
    return c.title || t('newChat');
  }

  /** A conversation's `source` -> the platform's name key (platform_*). */
  const SOURCE_PLATFORM = { wechat_mp: 'mp', wecom: 'wecom', telegram: 'tg', zsxq: 'zsxq' };

  const newConvId = () => 'w_' + randomId();
  const CONV_ID_RE = /^[A-Za-z0-9_.:-]{1,80}$/;

  /** What the server stores of a message. */
  function wireMessage(m) {
    const out = { role: m.role, content: m.content };
    if (typeof m.at === 'number') out.at = m.at;
    if (m.model) out.model = m.model;
    return out;
  }

  /** Saves of one conversation run one after another (each needs the last one's version). */
  const pushChains = new Map();

  /** Saves a web conversation on the server (whole), once any answer in it has finished. */
  function pushConv(conv) {
    if (serverConvs !== true || isPlatform(conv)) return Promise.resolve();
    conv.dirty = true;
    conv.rev = (conv.rev || 0) + 1;
    saveConvs();
    const prev = pushChains.get(conv.id) || Promise.resolve();
    const next = prev.then(() => pushNow(conv)).catch(() => {});
    pushChains.set(conv.id, next);
    next.then(() => { if (pushChains.get(conv.id) === next) pushChains.delete(conv.id); });
    return next;
  }

  async function pushNow(conv) {
    if (!conv.dirty || state.streams.has(conv.id) || !state.convs.includes(conv)) return;
    const messages = conv.messages
      .filter((m) => m.role === 'user' || (m.content && m.content.trim()))
      .map(wireMessage);
    if (!messages.length) return;
    const rev = conv.rev;
    const body = { title: conv.title || titleFrom(messages[0].content), messages };
    if (typeof conv.serverAt === 'number') body.base = conv.serverAt;
    let r;
    try {
      r = await api('/api/conversations/' + encodeURIComponent(conv.id), { method: 'PUT', body });
    } catch (e) {
      if (e.status === 409 && e.code === 'conflict' && e.info && e.info.current) conflicted(conv, e.info.current);
      else if (e.status === 413) { conv.dirty = false; conv.tooLarge = true; toast(t('convTooLarge')); saveConvs(); }
      // Anything else (offline, a restart): it stays dirty and the next sync saves it.
      return;
    }
    conv.serverAt = r.updated_at;
    conv.updated = r.updated_at;
    conv.count = messages.length;
    conv.loaded = true;
    conv.tooLarge = false;
    // Changed again while this save was on its way: the save queued after it sends that.
    if (conv.rev === rev) conv.dirty = false;
    saveConvs();
  }

  /** The conversation changed elsewhere since we loaded it: the server's version takes its
   * place, and ours is kept as a copy (nothing typed or answered is lost). */
  function conflicted(conv, current) {
    const copy = {
      id: newConvId(), title: (conv.title || t('newChat')) + t('copySuffix'), source: 'web',
      created: Date.now(), updated: Date.now(), messages: conv.messages, dirty: true,
    };
    state.convs.unshift(copy);
    adoptServer(conv, current);
    saveConvs();
    renderConvList();
    if (state.currentId === conv.id) renderThread();
    toast(t('convConflict'));
    pushConv(copy);
  }

  /** Takes a conversation as the server sent it (GET or a conflict's `current`). */
  function adoptServer(conv, r) {
    conv.messages = (Array.isArray(r.messages) ? r.messages : [])
      .filter((m) => m && typeof m.content === 'string')
      .map((m) => {
        const out = { role: m.role === 'assistant' ? 'assistant' : 'user', content: m.content };
        if (typeof m.at === 'number') out.at = m.at;
        if (m.model) out.model = String(m.model);
        return out;
      });
    if (typeof r.title === 'string') conv.title = r.title;
    conv.source = r.source || 'web';
    conv.serverAt = r.updated_at;
    conv.updated = r.updated_at || conv.updated;
    conv.count = conv.messages.length;
    conv.loaded = true;
    conv.dirty = false;
  }

  /** Fetches the messages of a listed conversation not opened here yet (or changed). */
  async function loadConv(conv) {
    if (conv.loaded || serverConvs !== true) return;
    let r;
    try {
      r = await api('/api/conversations/' + encodeURIComponent(conv.id));
    } catch (e) {
      if (e.status === 404 && state.convs.includes(conv) && !conv.dirty) {
        removeConv(conv);
      } else if (e.status !== 401 && state.currentId === conv.id && !conv.messages.length) {
        showBanner(t('convLoadFailed'));
      }
      return;
    }
    if (conv.dirty || state.streams.has(conv.id) || !state.convs.includes(conv)) return;
    adoptServer(conv, r);
    saveConvs();
    renderConvList();
    if (state.currentId === conv.id) { renderThread(); updateComposer(); scrollToBottom(true); }
  }

  function removeConv(conv) {
    state.convs = state.convs.filter((c) => c !== conv);
    saveConvs();
    if (state.currentId === conv.id) { state.currentId = null; renderThread(); updateComposer(); }
    renderConvList();
  }

  /** How often an open page asks for the list (besides on load and on coming back). */
  const CONV_SYNC_MS = 60000;
  let syncing = null;
  /** Brings the list in line with the server's, and saves what only this browser has. */
  function syncConvs() {
    if (!state.token || state.view !== 'chat') return Promise.resolve();
    if (!syncing) syncing = syncNow().finally(() => { syncing = null; });
    return syncing;
  }

  async function syncNow() {
    const uid = state.uid;
    let r;
    try {
      r = await api('/api/conversations');
    } catch (e) {
      // An older server without the API: conversations stay in this browser.
      if (e.status === 404 || e.status === 405) serverConvs = false;
      return;
    }
    if (uid !== state.uid) return;
    serverConvs = true;
    const listed = Array.isArray(r.conversations) ? r.conversations : [];
    const byId = new Map(state.convs.map((c) => [c.id, c]));
    const seen = new Set();
    const toPush = [];
    for (const sc of listed) {
      if (!sc || typeof sc.id !== 'string') continue;
      seen.add(sc.id);
      let c = byId.get(sc.id);
      if (!c) {
        c = { id: sc.id, messages: [], loaded: false };
        state.convs.push(c);
      }
      if (state.streams.has(c.id)) continue; // saved when its answer ends
      if (c.dirty) { if (!c.tooLarge) toPush.push(c); continue; } // ours is newer (saved offline)
      if (typeof sc.title === 'string') c.title = sc.title;
      c.source = sc.source || 'web';
      c.count = sc.count;
      c.updated = sc.updated_at;
      if (c.serverAt !== sc.updated_at) c.loaded = false;
    }
    for (const c of state.convs.slice()) {
      if (seen.has(c.id) || state.streams.has(c.id)) continue;
      if (isPlatform(c) || (typeof c.serverAt === 'number' && !c.dirty)) {
        // Deleted on another device (or pruned, or a platform's memory cleared): gone here
        // too. Platform conversations only ever live on the server.
        state.convs = state.convs.filter((x) => x !== c);
        if (state.currentId === c.id) state.currentId = null;
        continue;
      }
      if (!c.messages.length || c.tooLarge) continue;
      // Only in this browser (from before, or saved offline): move it to the server.
      if (!/^w_/.test(c.id) || !CONV_ID_RE.test(c.id)) {
        const id = CONV_ID_RE.test('w_' + c.id) ? 'w_' + c.id : newConvId();
        if (state.currentId === c.id) state.currentId = id;
        c.id = id;
      }
      c.serverAt = undefined;
      toPush.push(c);
    }
    saveConvs();
    renderConvList();
    const cur = currentConv();
    if (cur && !cur.loaded && seen.has(cur.id)) loadConv(cur);
    else if (!cur) { renderThread(); updateComposer(); }
    await Promise.all(toPush.map((c) => { c.dirty = true; return pushConv(c); }));
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
      renderModels();
      updateComposer();
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
    syncConvs();
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

  // Model picker -------------------------------------------------------------
  // A button showing the model and its price, opening a listbox (the WAI-ARIA "select-only
  // combobox" pattern): arrows move, Enter or Space picks, Escape closes, typing a letter
  // jumps. Prices come from /api/config; which models this user may use from /v1/models.

  let pickedModel = null;

  async function loadModels() {
    try {
      const r = await api('/v1/models');
      state.models = (r.data || []).map((m) => m.id).filter(Boolean);
    } catch (e) {
      if (e.status !== 401) showBanner(t('errGeneric', { msg: e.message }));
      return;
    }
    const saved = readStore(MODEL_KEY);
    const dflt = state.config && state.config.default_model;
    pickedModel = saved && state.models.includes(saved) ? saved
      : dflt && state.models.includes(dflt) ? dflt : state.models[0] || null;
    renderModels();
  }

  function modelInfo(id) {
    const list = (state.config && state.config.models) || [];
    return list.find((m) => m && m.id === id) || null;
  }

  /** "3 额度/条", with the per-token part when the model has one. */
  function priceText(id) {
    const m = modelInfo(id);
    if (!m) return '';
    let text = t('priceEach', { n: m.credits });
    if (m.credits_per_1k_tokens) text += ' ' + t('pricePer1k', { n: m.credits_per_1k_tokens });
    return text;
  }

  function renderModels() {
    const id = pickedModel || '';
    $('model-name').textContent = id || '–';
    $('model-price').textContent = priceText(id);
    $('model-button').disabled = state.models.length < 2;
    const list = $('model-list');
    list.textContent = '';
    state.models.forEach((m, i) => {
      const info = modelInfo(m);
      const tags = [];
      if (info && info.paid_only) tags.push(el('span', { class: 'model-tag', text: t('modelPaidOnly') }));
      if (info && info.vision) tags.push(el('span', { class: 'model-tag', text: t('modelVision') }));
      const li = el('li', {
        id: 'model-opt-' + i, role: 'option', class: 'model-option', 'data-testid': 'model-option', 'data-model': m,
        'aria-selected': m === id ? 'true' : 'false',
      },
      el('span', { class: 'model-option-main' },
        el('span', { class: 'model-option-name', text: m }),
        el('span', { class: 'model-option-price', text: priceText(m) })),
      tags.length ? el('span', { class: 'model-tags' }, ...tags) : null);
      li.insertAdjacentHTML('beforeend', '<svg class="model-check" viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M5 12l5 5 9-10" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round"/></svg>');
      li.addEventListener('click', () => pickModel(m));
      li.addEventListener('mousemove', () => setActiveOption(i));
      list.append(li);
    });
  }

  let activeOption = -1;
  function setActiveOption(i) {
    const opts = $('model-list').querySelectorAll('[role="option"]');
    if (!opts.length) return;
    activeOption = Math.max(0, Math.min(opts.length - 1, i));
    opts.forEach((o, k) => o.classList.toggle('active', k === activeOption));
    $('model-list').setAttribute('aria-activedescendant', opts[activeOption].id);
    opts[activeOption].scrollIntoView({ block: 'nearest' });
  }

  function openModels() {
    if (state.models.length < 2) return;
    const list = $('model-list');
    list.hidden = false;
    $('model-button').setAttribute('aria-expanded', 'true');
    setActiveOption(Math.max(0, state.models.indexOf(pickedModel)));
    list.focus();
  }

  function closeModels(refocus) {
    const list = $('model-list');
    if (list.hidden) return;
    list.hidden = true;
    $('model-button').setAttribute('aria-expanded', 'false');
    if (refocus) $('model-button').focus();
  }

  function pickModel(id) {
    pickedModel = id;
    writeStore(MODEL_KEY, id);
    renderModels();
    closeModels(true);
    announce(t('modelPicked', { model: id }));
  }

  function modelKeys(e) {
    const n = state.models.length;
    if (e.key === 'ArrowDown') { e.preventDefault(); setActiveOption(activeOption + 1); }
    else if (e.key === 'ArrowUp') { e.preventDefault(); setActiveOption(activeOption - 1); }
    else if (e.key === 'Home') { e.preventDefault(); setActiveOption(0); }
    else if (e.key === 'End') { e.preventDefault(); setActiveOption(n - 1); }
    else if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); if (state.models[activeOption]) pickModel(state.models[activeOption]); }
    else if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); closeModels(true); }
    else if (e.key === 'Tab') closeModels(false);
    else if (e.key.length === 1 && /\S/.test(e.key)) {
      const k = state.models.findIndex((m, i) => i > activeOption && m.toLowerCase().startsWith(e.key.toLowerCase()));
      const j = k >= 0 ? k : state.models.findIndex((m) => m.toLowerCase().startsWith(e.key.toLowerCase()));
      if (j >= 0) setActiveOption(j);
    }
  }

  function currentModel() {
    return pickedModel || readStore(MODEL_KEY) || state.models[0] || '';
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
    const convs = state.convs.filter(hasContent);
    convs.sort((a, b) => (b.updated || 0) - (a.updated || 0));
    $('conv-empty').hidden = convs.length > 0;
    for (const c of convs) {
      const title = convTitle(c);
      const open = el('button', {
        type: 'button', class: 'conv-open', 'data-testid': 'conversation-item', 'data-source': c.source || 'web',
        'aria-current': c.id === state.currentId ? 'true' : null, title,
      }, el('span', { class: 'conv-title', text: title }));
      // Platform conversations: the label says where (in the page's language).
      // (The server's title is its own label, then " · ACCOUNT" when the user follows two
      // accounts of one platform: only that account is worth adding.)
      const account = isPlatform(c) && typeof c.title === 'string' && c.title.indexOf(' · ') > 0 ? c.title.slice(c.title.indexOf(' · ') + 3) : '';
      if (account) open.append(el('span', { class: 'conv-sub', text: account }));
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
      const item = el('li', { class: 'conv' + (c.id === state.currentId ? ' active' : '') }, open);
      // A platform conversation's name says where it happens: only the page's own are renamed.
      if (!isPlatform(c)) {
        const ren = el('button', {
          type: 'button', class: 'icon-btn conv-ren', 'data-testid': 'conversation-rename',
          'aria-label': t('renameConv', { title }), title: t('renameConv', { title }),
        });
        ren.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M4 20h4L19 9l-4-4L4 16v4zM13.5 6.5l4 4" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"/></svg>';
        ren.addEventListener('click', () => startRename(item, c));
        item.append(ren);
      }
      item.append(del);
      list.append(item);
    }
  }

  function switchConv(id) {
    state.currentId = id;
    hideBanner();
    renderConvList();
    renderThread();
    updateComposer();
    scrollToBottom(true);
    const conv = currentConv();
    if (conv && !conv.loaded && serverConvs === true) loadConv(conv);
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

  /** Turns a list item's title into a text field: Enter or leaving it renames, Escape keeps
   * the old name. */
  function startRename(item, conv) {
    const open = item.querySelector('.conv-open');
    const input = el('input', {
      type: 'text', class: 'conv-rename-input', 'data-testid': 'conversation-rename-input',
      maxlength: '200', 'aria-label': t('renameConv', { title: convTitle(conv) }),
    });
    input.value = conv.title || '';
    let done = false;
    const finish = (keep) => {
      if (done) return;
      done = true;
      if (keep) renameConv(conv, input.value);
      else renderConvList();
    };
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.isComposing) { e.preventDefault(); finish(true); }
      else if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); finish(false); }
    });
    input.addEventListener('blur', () => finish(true));
    open.replaceWith(input);
    input.focus();
    input.select();
  }

  /** Renames a web conversation: here at once, then on the server (after any save of it on
   * its way, since each carries the version the last one made). */
  function renameConv(conv, raw) {
    const title = String(raw || '').trim().slice(0, 200);
    if (!title || title === conv.title) { renderConvList(); return; }
    const before = conv.title;
    conv.title = title;
    saveConvs();
    renderConvList();
    if (state.currentId === conv.id) renderThread();
    if (serverConvs !== true || !state.convs.includes(conv)) return;
    // Changed here since the last save: the whole save that is due carries the name.
    if (conv.dirty) { pushConv(conv); return; }
    const prev = pushChains.get(conv.id) || Promise.resolve();
    const next = prev.then(async () => {
      try {
        const r = await api('/api/conversations/' + encodeURIComponent(conv.id), { method: 'PATCH', body: { title } });
        // The messages held are still the server's (a rename changes only the name).
        if (typeof conv.serverAt === 'number') conv.serverAt = r.updated_at;
        conv.updated = r.updated_at;
      } catch (e) {
        if (e.status === 401) return;
        // Not on the server (deleted elsewhere, or never saved): saved whole, with the name.
        if (e.status === 404 && conv.messages.length) { conv.serverAt = undefined; pushConv(conv); return; }
        conv.title = before;
        toast(t('renameFailed'));
      }
      saveConvs();
      renderConvList();
    });
    pushChains.set(conv.id, next);
    next.then(() => { if (pushChains.get(conv.id) === next) pushChains.delete(conv.id); });
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
    const onServer = serverConvs === true && (typeof conv.serverAt === 'number' || isPlatform(conv) || conv.dirty);
    if (onServer) {
      api('/api/conversations/' + encodeURIComponent(id), { method: 'DELETE' }).catch((e) => {
        if (e.status === 404 || e.status === 401) return;
        // Not deleted: it comes back, and says so.
        if (!state.convs.includes(conv)) { state.convs.push(conv); saveConvs(); renderConvList(); }
        toast(t('deleteFailed'));
      });
    }
    // A platform conversation's memory is gone with it (as "/new" there): nothing to undo.
    toast(isPlatform(conv) ? t('deletedPlatform') : t('deleted'), isPlatform(conv) ? null : {
      label: t('undo'),
      run() {
        state.convs.push(conv);
        saveConvs();
        renderConvList();
        if (onServer) { conv.serverAt = undefined; pushConv(conv); }
      },
    });
  }

  /** Builds one message's element. Assistant text is markdown rendered from escaped text;
   * user text is only ever text. */
  function messageNode(conv, msg, index) {
    if (msg.role === 'user') {
      const node = el('div', { class: 'msg msg-user', 'data-testid': 'message-user', 'data-index': index, role: 'article', 'aria-label': t('you') },
        el('div', { class: 'bubble', text: msg.content }),
        el('div', { class: 'msg-foot' }));
      const foot = node.lastChild;
      foot.append(el('button', { type: 'button', class: 'link-btn', 'data-copy-msg': '', text: t('copy') }));
      if (!isPlatform(conv) && !state.streams.has(conv.id)) {
        const edit = el('button', { type: 'button', class: 'link-btn', 'data-testid': 'edit-message', text: t('edit') });
        edit.addEventListener('click', () => startEdit(conv, index, node));
        foot.append(edit);
      }
      return node;
    }
    const node = el('div', {
      class: 'msg msg-assistant', 'data-testid': 'message-assistant', 'data-index': index, 'data-state': msg.state || 'done',
      role: 'article', 'aria-label': t('assistant'),
    },
      el('div', { class: 'md' }),
      el('div', { class: 'msg-foot' }));
    nodes.set(msg, node);
    fillMessage(conv, msg, index);
    return node;
  }

  /** Edit-and-resend: the question becomes a text box; saving drops everything after it
   * and asks again with the new text (the old answers are gone, as in other chat apps). */
  function startEdit(conv, index, node) {
    if (state.streams.has(conv.id)) return;
    const msg = conv.messages[index];
    const box = el('textarea', { class: 'edit-input', 'data-testid': 'edit-input', rows: '3', 'aria-label': t('editLabel') });
    box.value = msg.content;
    const save = el('button', { type: 'submit', class: 'btn primary small-btn', 'data-testid': 'edit-save', text: t('editSave') });
    const cancel = el('button', { type: 'button', class: 'btn small-btn', 'data-testid': 'edit-cancel', text: t('cancel') });
    const form = el('form', { class: 'edit-form', novalidate: true }, box, el('div', { class: 'edit-actions' }, cancel, save));
    const sync = () => { save.disabled = !box.value.trim(); };
    box.addEventListener('input', sync);
    box.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); form.requestSubmit(); }
      else if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); renderThread(); }
    });
    cancel.addEventListener('click', () => renderThread());
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const text = box.value.replace(/\s+$/, '');
      if (!text.trim() || state.streams.has(conv.id)) return;
      conv.messages = conv.messages.slice(0, index);
      conv.messages.push({ role: 'user', content: text, at: Date.now() });
      if (index === 0) conv.title = titleFrom(text);
      startAnswer(conv);
    });
    node.textContent = '';
    node.classList.add('editing');
    node.append(form);
    sync();
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
  }

  /** Answer element -> { head, count }: the settled markdown already on screen and how many
   * child nodes it made (see splitStable). */
  const streamed = new WeakMap();

  /** Renders a streaming answer: settled blocks are added once, only the tail is redone. */
  function paintStreaming(md, src) {
    let st = streamed.get(md);
    const { head, tail } = splitStable(src);
    if (!st || !head.startsWith(st.head)) {
      md.textContent = '';
      st = { head: '', count: 0 };
      streamed.set(md, st);
    }
    while (md.childNodes.length > st.count) md.lastChild.remove();
    if (head.length > st.head.length) {
      md.insertAdjacentHTML('beforeend', renderMarkdown(head.slice(st.head.length)));
      st.head = head;
      st.count = md.childNodes.length;
    }
    md.insertAdjacentHTML('beforeend', renderMarkdown(tail));
  }

  /** Updates an assistant message's element from its state. */
  function fillMessage(conv, msg, index) {
    const node = nodes.get(msg);
    if (!node) return;
    node.dataset.state = msg.state || 'done';
    const md = node.querySelector('.md');
    if (msg.content && msg.state === 'streaming') paintStreaming(md, msg.content);
    else if (msg.content) { streamed.delete(md); md.innerHTML = renderMarkdown(msg.content); } else if (msg.state === 'streaming') md.innerHTML = '<span class="typing" aria-hidden="true"><i></i><i></i><i></i></span>';
    else md.textContent = '';
    const foot = node.querySelector('.msg-foot');
    foot.textContent = '';
    if (msg.state === 'streaming') return;
    if (msg.model) foot.append(el('span', { class: 'tag tag-model', 'data-testid': 'answer-model', text: msg.model }));
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
    if (isLast && !state.streams.has(conv.id) && canRetry(msg) && !isPlatform(conv)) {
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
    $('welcome').hidden = !!(conv && hasContent(conv));
    $('export-chat').hidden = !(conv && conv.messages.length);
    if (!conv) return;
    if (!conv.messages.length && !conv.loaded) {
      thread.append(el('p', { class: 'muted thread-loading', role: 'status', text: t('loading') }));
      return;
    }
    if (isPlatform(conv)) thread.append(el('p', { class: 'muted small platform-note', 'data-testid': 'platform-note', text: t('platformNote', { where: platformName(SOURCE_PLATFORM[conv.source] || conv.source) }) }));
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
    // Nothing to send (an empty box) or an answer still coming: the button says so.
    $('send').disabled = streaming || !$('chat-input').value.trim();
    $('export-chat').hidden = !(conv && conv.messages.length);
  }

  /** The conversation as a Markdown file, downloaded. */
  function exportConv() {
    const conv = currentConv();
    if (!conv || !conv.messages.length) return;
    const title = convTitle(conv);
    const d = new Date();
    const stamp = d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' + pad2(d.getHours()) + ':' + pad2(d.getMinutes());
    let out = '# ' + title.replace(/\n/g, ' ') + '\n\n> ' + t('exportedAt', { time: stamp }) + '\n';
    for (const m of conv.messages) {
      if (m.role !== 'user' && !(m.content && m.content.trim())) continue;
      const who = m.role === 'user' ? t('you') : m.model ? t('assistant') + ' · ' + m.model : t('assistant');
      out += '\n## ' + who + '\n\n' + m.content.replace(/\s+$/, '') + '\n';
    }
    const name = (title.replace(/[\\/:*?"<>|\u0000-\u001f]+/g, ' ').trim().slice(0, 60) || 'chat') + '.md';
    const url = URL.createObjectURL(new Blob([out], { type: 'text/markdown;charset=utf-8' }));
    const a = el('a', { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    announce(t('exported'));
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
      conv = { id: newConvId(), title: titleFrom(text), source: 'web', created: Date.now(), updated: Date.now(), messages: [], loaded: true };
      state.convs.unshift(conv);
      state.currentId = conv.id;
    }
    conv.messages.push({ role: 'user', content: text, at: Date.now() });
    input.value = '';
    autosize();
    updateComposer();
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
    const msg = { role: 'assistant', content: '', state: 'streaming', model: currentModel(), at: Date.now() };
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
      // A platform conversation is continued by the server with its memory; a web one is
      // sent whole to the stateless /v1 API.
      const platform = isPlatform(conv);
      const question = wireMessages(conv, msg).filter((m) => m.role === 'user').pop();
      const url = platform ? '/api/conversations/' + encodeURIComponent(conv.id) + '/messages' : '/v1/chat/completions';
      try {
        res = await fetch(url, {
          method: 'POST',
          headers: {
            'Content-Type': 'application/json', Accept: 'text/event-stream', Authorization: 'Bearer ' + state.token,
            'X-Chatrelay-Client': 'web', 'Accept-Language': acceptLanguage(),
          },
          body: JSON.stringify(platform ? { content: question ? question.content : '', model: msg.model } : {
            model: msg.model,
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
      if (!res.ok) throw await errorFrom(res, url);
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
      // The server has the platform conversation's new turns; a web one is saved whole.
      if (isPlatform(conv)) { conv.count = conv.messages.length; } else if (state.token) pushConv(conv);
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
    // A platform conversation cleared or deleted elsewhere (the server's text is bilingual).
    if (code === 'not_found') return t('convGone');
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
        if (!state.streams.size) { loadConvs(); renderConvList(); renderThread(); syncConvs(); }
      }
      renderBalance();
      refreshLastAnswer();
    } catch (_) { /* the chip keeps its last value; 401 is handled by api() */ }
  }

  /** A ledger entry's reason in the page's language. The server writes the ones it makes in
   * fixed forms ("guest trial", "answer (MODEL)", "order ID: NAME (会员 …)"); reasons an
   * operator typed are shown as typed. */
  function reasonText(reason) {
    let r = String(reason || '');
    let note = '';
    let m = / \(会员 (.+) (\d{4}-\d{2}-\d{2}) 至 (\d{4}-\d{2}-\d{2})\)$/.exec(r);
    if (m) { note = t('reason_plan', { name: m[1], start: m[2], end: m[3] }); r = r.slice(0, m.index); } else if ((m = / \(会员 (.+) 已结束\)$/.exec(r))) {
      note = t('reason_planEnded', { name: m[1] });
      r = r.slice(0, m.index);
    }
    let out;
    if (r === 'guest trial') out = t('reason_guest');
    else if (r === 'answer not delivered') out = t('reason_undelivered');
    else if ((m = /^answer \((.+)\)$/.exec(r))) out = t('reason_answer', { model: m[1] });
    else if ((m = /^refund of order (\S+): ([\s\S]*)$/.exec(r))) out = t('reason_refund', { id: m[1], why: m[2] });
    else if ((m = /^order (\S+): ([\s\S]*)$/.exec(r))) out = t('reason_order', { id: m[1], name: m[2] });
    else if ((m = /^兑换码 (\S+)$/.exec(r))) out = t('reason_code', { id: m[1] });
    else out = r;
    return out + note;
  }

  /** The account's name as shown: users the server made by themselves are named by what
   * made them (a guest; "mp:ACCOUNT:OPENID" for a follower of the Official Account), not by
   * those internal keys. */
  function displayName(name) {
    const n = String(name || '');
    if (n === 'guest') return t('guestName');
    const m = /^(mp|wecom|zsxq|tg|web|api):/.exec(n);
    return m ? t('userOf', { where: platformName(m[1]) }) : n;
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
    $('account-name').textContent = me ? t('userLine', { name: displayName(me.name), uid: me.uid }) : '';
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
          u.reason ? el('span', { class: 'usage-reason', text: reasonText(u.reason) }) : null)));
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
  /** Where an answer was asked, in the page's language (unknown ones as the server says). */
  function platformName(p) {
    const k = 'platform_' + p;
    const s = t(k);
    return s === k ? String(p || '') : s;
  }

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
        el('span', { text: platformName(r.platform) }),
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
    syncConvs();
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

  /** The payment methods' marks, drawn here (simple shapes in each brand's colour; no
   * trademark files are downloaded or shipped). */
  const PAY_LOGOS = {
    wechat: '<svg class="pay-logo" data-testid="logo-wechat" viewBox="0 0 32 32" aria-hidden="true" focusable="false">' +
      '<rect width="32" height="32" rx="7" fill="#07c160"/>' +
      '<path d="M16 7.5c-5.2 0-9.3 3.4-9.3 7.7 0 2.4 1.3 4.5 3.3 5.9l-.7 2.6 3.1-1.6c1.1.3 2.3.5 3.6.5 5.2 0 9.3-3.4 9.3-7.4S21.2 7.5 16 7.5z" fill="#fff"/>' +
      '<path d="M11.3 14.6l3.2 3 6.3-6" fill="none" stroke="#07c160" stroke-width="2.3" stroke-linecap="round" stroke-linejoin="round"/></svg>',
    alipay: '<svg class="pay-logo" data-testid="logo-alipay" viewBox="0 0 32 32" aria-hidden="true" focusable="false">' +
      '<rect width="32" height="32" rx="7" fill="#1677ff"/>' +
      '<path d="M8 9.5h16M16 5.5v8M9.5 13.5h13M21.5 13.5c-2.4 6.5-7 10-13.5 11.5M10.5 17c3.4 3.3 8.4 6.3 14 8" fill="none" stroke="#fff" stroke-width="2.3" stroke-linecap="round" stroke-linejoin="round"/></svg>',
  };

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
      }, el('span', { class: 'channel-name', text: t('ch_' + c) }));
      b.insertAdjacentHTML('afterbegin', PAY_LOGOS[c] || '');
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
    input.addEventListener('input', () => { autosize(); updateComposer(); });
    $('export-chat').addEventListener('click', exportConv);
    $('stop').addEventListener('click', stopCurrent);
    $('new-chat').addEventListener('click', () => newChat(true));
    $('model-button').addEventListener('click', () => ($('model-list').hidden ? openModels() : closeModels(true)));
    $('model-button').addEventListener('keydown', (e) => {
      if (e.key === 'ArrowDown' || e.key === 'ArrowUp') { e.preventDefault(); openModels(); }
    });
    $('model-list').addEventListener('keydown', modelKeys);
    $('model-list').addEventListener('focusout', (e) => { if (!$('model-picker').contains(e.relatedTarget)) closeModels(false); });
    document.addEventListener('pointerdown', (e) => { if (!$('model-picker').contains(e.target)) closeModels(false); });
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
        const idx = node ? Number(node.dataset.index) : -1;
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
    // Conversations changed on another device show up while this one is open, too.
    setInterval(() => { if (document.visibilityState === 'visible') syncConvs(); }, CONV_SYNC_MS);
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
      syncConvs();
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
