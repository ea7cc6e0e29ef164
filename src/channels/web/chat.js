/* The web chat page's chat screen: entering it, the model picker, the conversation list
 * (switch, new, rename, delete).
 *
 * One of the page's scripts (index.html loads them in order, all `defer`): classic scripts
 * sharing one global scope, so a name declared here is seen by the files loaded after it.
 */
'use strict';

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
