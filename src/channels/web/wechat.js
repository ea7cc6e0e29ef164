/* chatrelay web page: where the page runs (WeChat's browser, a phone browser, a desktop) and
 * what follows from it — which payment method to use, how to call WeChat Pay inside WeChat,
 * and the guard that keeps automatic WeChat login from bouncing forever.
 *
 * No UI here: app.js owns the screens and calls these. Loaded before app.js (both `defer`),
 * exposed as `window.ChatrelayWechat`; Node can `require` it to test the pure parts.
 */
(function (root) {
  'use strict';

  /** Which kind of browser this is, from its user agent (and screen, for phones whose user
   * agent says nothing): 'wechat' (WeChat's in-app browser: OAuth and JSAPI work there),
   * 'phone' (any other phone browser, WeCom's included: H5 / WAP payments) or 'desktop'. */
  function clientKind(ua, narrowTouch) {
    const s = String(ua || '');
    // WeCom's browser also says MicroMessenger, but OA web authorization and JSAPI do not
    // work there: it pays like a phone browser.
    if (/MicroMessenger/i.test(s) && !/wxwork/i.test(s)) return 'wechat';
    if (/wxwork|Android|iPhone|iPod|Mobile|HarmonyOS/i.test(s) || narrowTouch) return 'phone';
    return 'desktop';
  }

  /** Payment methods in order of preference for each kind of browser. Methods that cannot
   * work there are left out (JSAPI needs WeChat's browser; H5 refuses to run inside it and
   * on desktops). Alipay inside WeChat: none, WeChat blocks it (the page shows a hint). */
  const PREFERENCE = {
    wechat: { wechat: ['jsapi', 'native'], alipay: [] },
    phone: { wechat: ['h5', 'native'], alipay: ['wap', 'precreate', 'page'] },
    desktop: { wechat: ['native'], alipay: ['page', 'precreate', 'wap'] },
  };

  /** The method to ask for on `channel`, given the server's `methods` (from /api/products):
   * a method name; `null` when the server lists no methods for the channel (then the order
   * is created without one, as before methods existed); `''` when nothing enabled works here. */
  function chooseMethod(kind, channel, methods) {
    const enabled = methods && Array.isArray(methods[channel]) ? methods[channel] : null;
    if (!enabled) return null;
    const wanted = (PREFERENCE[kind] || PREFERENCE.desktop)[channel] || [];
    return wanted.find((m) => enabled.includes(m)) || '';
  }

  /** Methods that show a QR code on the page (the rest send the browser elsewhere or open
   * WeChat's cashier over the page). */
  function isQrMethod(method) {
    return !method || method === 'native' || method === 'precreate';
  }

  /** Where WeChat Pay H5 should return to: the order page of this site. */
  function h5PayUrl(payUrl, origin, orderId) {
    const back = origin + '/?order=' + encodeURIComponent(orderId);
    return payUrl + (payUrl.includes('?') ? '&' : '?') + 'redirect_url=' + encodeURIComponent(back);
  }

  /** `login_url` from the server (or any local URL), with `next` pointing back at `path`.
   * Only the path and query are kept: the page never sends the user to another site here. */
  function withNext(loginUrl, path) {
    const u = new URL(String(loginUrl || '/'), 'http://page.invalid');
    u.searchParams.set('next', /^\/(?!\/)/.test(path) ? path : '/');
    return u.pathname + u.search;
  }

  /** Opens WeChat's cashier for a JSAPI order and resolves with 'ok', 'cancel' or 'fail'
   * (with WeChat's message). 'ok' only means the user finished in the cashier: the order is
   * paid when the server has the verified notification, so the caller keeps polling. */
  function payInWechat(params, timeoutMs) {
    return new Promise((resolve) => {
      let settled = false;
      const finish = (result) => { if (!settled) { settled = true; resolve(result); } };
      const invoke = () => {
        try {
          root.WeixinJSBridge.invoke('getBrandWCPayRequest', params, (res) => {
            const msg = String((res && res.err_msg) || '');
            if (msg === 'get_brand_wcpay_request:ok') finish({ result: 'ok', msg });
            else if (msg === 'get_brand_wcpay_request:cancel') finish({ result: 'cancel', msg });
            else finish({ result: 'fail', msg: (res && (res.err_desc || res.errMsg)) || msg });
          });
        } catch (e) {
          finish({ result: 'fail', msg: String((e && e.message) || e) });
        }
      };
      if (root.WeixinJSBridge && typeof root.WeixinJSBridge.invoke === 'function') { invoke(); return; }
      // The bridge arrives a moment after the page in WeChat's browser.
      const ready = () => { root.document.removeEventListener('WeixinJSBridgeReady', ready); invoke(); };
      root.document.addEventListener('WeixinJSBridgeReady', ready);
      setTimeout(() => {
        root.document.removeEventListener('WeixinJSBridgeReady', ready);
        finish({ result: 'fail', msg: 'WeixinJSBridge unavailable' });
      }, timeoutMs || 10000);
    });
  }

  // Automatic login inside WeChat leaves the page and comes back; if it comes back without a
  // login (OAuth refused, the user backed out), going again would loop. One try per tab
  // session, until a login succeeds or the user asks for it.
  const AUTO_KEY = 'chatrelay.wxauto';

  function session() {
    try { return root.sessionStorage; } catch (_) { return null; }
  }

  /** Whether the page may start WeChat login by itself now (and records that it does). */
  function claimAutoLogin() {
    const s = session();
    if (!s) return false; // without storage we could not tell a loop from a first visit
    try {
      if (s.getItem(AUTO_KEY)) return false;
      s.setItem(AUTO_KEY, String(Date.now()));
      return true;
    } catch (_) { return false; }
  }

  /** Stops automatic login for this tab session (after a logout, or a failed try). */
  function blockAutoLogin() {
    const s = session();
    try { if (s) s.setItem(AUTO_KEY, String(Date.now())); } catch (_) { /* nothing to do */ }
  }

  /** After a login: a later expiry may log in by itself again. */
  function resetAutoLogin() {
    const s = session();
    try { if (s) s.removeItem(AUTO_KEY); } catch (_) { /* nothing to do */ }
  }

  const api = { clientKind, chooseMethod, isQrMethod, h5PayUrl, withNext, payInWechat, claimAutoLogin, blockAutoLogin, resetAutoLogin };
  if (typeof module !== 'undefined' && module.exports) module.exports = api;
  else root.ChatrelayWechat = api;
})(typeof window !== 'undefined' ? window : globalThis);
