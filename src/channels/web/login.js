/* The web chat page's login: typed codes, guest, API token, and WeChat (web authorization
 * inside WeChat, scan to log in on a desktop, the login handoff).
 *
 * One of the page's scripts (index.html loads them in order, all `defer`): classic scripts
 * sharing one global scope, so a name declared here is seen by the files loaded after it.
 */
'use strict';

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
