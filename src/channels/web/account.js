/* The web chat page's account sheet: balance, membership plan, redemption codes, usage log;
 * and the panels (sheets, drawer) they open in.
 *
 * One of the page's scripts (index.html loads them in order, all `defer`): classic scripts
 * sharing one global scope, so a name declared here is seen by the files loaded after it.
 */
'use strict';

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
