/* The web chat page's thread: messages (render, edit, retry, export), the composer, sending
 * and streaming an answer, the error banner.
 *
 * One of the page's scripts (index.html loads them in order, all `defer`): classic scripts
 * sharing one global scope, so a name declared here is seen by the files loaded after it.
 */
'use strict';

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
  if (msg.content && msg.state !== 'error' && canSpeak(msg, md)) {
    const play = el('button', { type: 'button', class: 'link-btn', 'data-testid': 'play-answer', text: t('play') });
    play.chatMsg = msg;
    paintPlay(play, playState.get(msg));
    play.addEventListener('click', () => playAnswer(msg, md));
    foot.append(play);
  }
  const isLast = index === conv.messages.length - 1;
  if (isLast && !state.streams.has(conv.id) && canRetry(msg) && !isPlatform(conv)) {
    const again = el('button', { type: 'button', class: 'link-btn', 'data-testid': 'regenerate', text: t('regenerate') });
    again.addEventListener('click', () => regenerate(conv));
    foot.append(again);
  }
}

/** Whether an answer gets a play button: the web scope speaks (`[[scopes]] voice_reply`),
 * and the answer is short and without code (read, not listened to), as on the platforms. */
function canSpeak(msg, md) {
  const v = state.config && state.config.voice_reply;
  if (!v || msg.content.includes('```')) return false;
  const text = md.textContent.trim();
  return text.length > 0 && [...text].length <= v.max_chars;
}

/** Spoken answers: each message's audio (an object URL), fetched once, since each fetch is
 * charged; each message's play state (kept apart from its button, which a re-render
 * replaces); and what is playing, so that a second play stops the first. */
const spokenAudio = new WeakMap();
const playState = new WeakMap();
let playingAudio = null;

/** Shows a play button's state: `speaking` (fetching), `playing`, `played`, `stopped`, `error`. */
function paintPlay(btn, st) {
  btn.disabled = st === 'speaking';
  btn.textContent = t(st === 'speaking' ? 'speaking' : st === 'playing' ? 'playing' : 'play');
  if (st) btn.dataset.state = st;
  else delete btn.dataset.state;
}

/** Records a message's play state and shows it on its button(s) now on the page. */
function setPlay(msg, st) {
  playState.set(msg, st);
  for (const b of document.querySelectorAll('[data-testid="play-answer"]')) if (b.chatMsg === msg) paintPlay(b, st);
}

/** Speaks an answer (`/v1/audio/speech`, the user's token, charged `speech_credits`) and plays
 * it; a failure is said in a toast and costs nothing. */
async function playAnswer(msg, md) {
  if (playingAudio) { playingAudio.pause(); playingAudio = null; }
  let url = spokenAudio.get(msg);
  if (!url) {
    if (playState.get(msg) === 'speaking') return;
    setPlay(msg, 'speaking');
    try {
      let res;
      try {
        res = await fetch('/v1/audio/speech', {
          method: 'POST',
          headers: {
            'Content-Type': 'application/json', Accept: 'audio/*, application/json',
            'Accept-Language': acceptLanguage(), Authorization: 'Bearer ' + state.token,
          },
          body: JSON.stringify({ model: 'tts-1', input: md.textContent.trim(), response_format: 'mp3' }),
          cache: 'no-store',
        });
      } catch (_) {
        throw new ApiError(0, 'network', t('networkError'));
      }
      if (!res.ok) throw await errorFrom(res, '/v1/audio/speech');
      url = URL.createObjectURL(await res.blob());
      spokenAudio.set(msg, url);
      refreshMe();
    } catch (e) {
      setPlay(msg, 'error');
      toast((e && e.message) || t('playFailed'));
      return;
    }
  }
  const audio = new Audio(url);
  playingAudio = audio;
  setPlay(msg, 'playing');
  const done = (st) => {
    setPlay(msg, st);
    if (playingAudio === audio) playingAudio = null;
  };
  audio.addEventListener('ended', () => done('played'));
  audio.addEventListener('pause', () => { if (!audio.ended) done('stopped'); });
  try {
    await audio.play();
  } catch (_) {
    done('error');
    toast(t('playFailed'));
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
  updateRecord(streaming);
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
