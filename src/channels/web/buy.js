/* The web chat page's purchase flow: products, payment methods (WeChat JSAPI / H5 / Native,
 * Alipay WAP / page / QR), orders and their polling, resuming after a payment redirect.
 *
 * One of the page's scripts (index.html loads them in order, all `defer`): classic scripts
 * sharing one global scope, so a name declared here is seen by the files loaded after it.
 */
'use strict';

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
