/* The web chat page's start: event bindings, then boot (config, login handoff, chat or login).
 * Loaded last: every other file has defined what it uses.
 *
 * One of the page's scripts (index.html loads them in order, all `defer`): classic scripts
 * sharing one global scope, so a name declared here is seen by the files loaded after it.
 */
'use strict';

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
  bindRecord();
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
