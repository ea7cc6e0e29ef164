/* The web chat page's core: the API client and its errors, the page's state, conversations in
 * localStorage and on the server (sync), the language in the DOM, the views.
 *
 * The page is plain ES2020, no build step, no dependencies: it must run in WeChat's in-app
 * browser and under a strict CSP (no eval, no inline handlers or styles). Model and user text is
 * only ever inserted as text, or as HTML that the page escaped first (render.js).
 *
 * One of the page's scripts (index.html loads them in order, all `defer`): classic scripts
 * sharing one global scope, so a name declared here is seen by the files loaded after it.
 */
'use strict';

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
