/* The web chat page's voice input: a record button beside the composer, shown when `[speech]`
 * is on (`/api/config` `speech`) and the browser can record. Hold it to talk and let go to send
 * (a phone); or click it (a desktop, the keyboard: Enter or Space) to start, and again to send.
 * Sliding away from the button before letting go, the cancel button or Esc cancel; nothing is
 * uploaded then. The recording (MediaRecorder: webm/opus in Chromium and Firefox, mp4/aac in
 * Safari) stops by itself at `max_seconds`, is checked against `max_bytes` and sent to
 * `/v1/audio/transcriptions` with the user's token (charged `[speech] credits`); what was heard
 * is then sent at once as the user's message (one tap, as a voice message in WeChat; the
 * message's edit button corrects a mishearing), or, when the box already held a draft, added
 * to it for the user to finish. Every failure is said in the error banner; nothing is sent.
 *
 * One of the page's scripts (index.html loads them in order, all `defer`): classic scripts
 * sharing one global scope, so a name declared here is seen by the files loaded after it.
 */
'use strict';

// ---------------------------------------------------------------- pure parts (Node-tested)

/** Recording types by preference: each one the transcription upstreams read as it is. */
const RECORD_TYPES = [
  'audio/webm;codecs=opus', 'audio/webm', 'audio/mp4;codecs=mp4a.40.2', 'audio/mp4',
  'audio/ogg;codecs=opus', 'audio/ogg',
];

/** The first of RECORD_TYPES that `isSupported` (MediaRecorder.isTypeSupported) accepts, or
 * '' when none is: the page then has no record button. */
function pickRecordType(isSupported) {
  for (const type of RECORD_TYPES) {
    try {
      if (isSupported(type)) return type;
    } catch (_) { /* an odd browser: try the next */ }
  }
  return '';
}

/** The file extension `/v1/audio/transcriptions` knows a recording's type by ('' for a type
 * it does not). The blob's own type may carry codecs (`audio/webm;codecs=opus`). */
function audioExtension(type) {
  const base = String(type || '').split(';')[0].trim().toLowerCase();
  const ext = {
    'audio/webm': 'webm', 'video/webm': 'webm', 'audio/mp4': 'mp4', 'video/mp4': 'mp4',
    'audio/x-m4a': 'm4a', 'audio/m4a': 'm4a', 'audio/ogg': 'ogg', 'audio/wav': 'wav', 'audio/mpeg': 'mp3',
  };
  return Object.prototype.hasOwnProperty.call(ext, base) ? ext[base] : '';
}

/** `m:ss` for a length in milliseconds. */
function formatElapsed(ms) {
  const s = Math.max(0, Math.floor((Number(ms) || 0) / 1000));
  return Math.floor(s / 60) + ':' + String(s % 60).padStart(2, '0');
}

/** Shorter than this is a slip of the finger, not speech: not uploaded. */
const MIN_RECORD_MS = 500;

/** Why a recording of `ms` milliseconds and `bytes` bytes is not sent under `limits`
 * (`{max_seconds, max_bytes}`): 'short', 'long', or '' when it may be sent. The auto-stop
 * lands a moment after `max_seconds`: a second of slack. */
function recordingProblem(ms, bytes, limits) {
  if (!(ms >= MIN_RECORD_MS) || !(bytes > 0)) return 'short';
  if (bytes > limits.max_bytes || ms > (limits.max_seconds + 1) * 1000) return 'long';
  return '';
}

// Node loads this file after render.js to unit-test the parts above; the page never takes
// this path.
if (typeof document === 'undefined' && typeof module !== 'undefined') {
  Object.assign(module.exports, { pickRecordType, audioExtension, formatElapsed, recordingProblem, MIN_RECORD_MS });
}

// ---------------------------------------------------------------- recording

/** A press held longer than this is hold-to-talk (letting go sends); a shorter one is a click
 * (recording goes on until the next click). */
const HOLD_MS = 350;
/** How far (px) past the button's edge a held finger may go before letting go cancels. */
const CANCEL_SLOP = 48;
/** Bits per second asked of the recorder: plenty for speech, small uploads on a phone. */
const RECORD_BPS = 32000;

/** The recording in progress. `phase`: idle, starting (asking for the microphone),
 * recording, sending (uploading, transcribing). `mode`: hold or click. `run` counts
 * recordings, so that an answer arriving for a cancelled one is dropped. */
const rec = {
  phase: 'idle', mode: '', run: 0, pointerId: null, endPointer: null, pressedAt: 0, away: false,
  stream: null, recorder: null, chunks: [], bytes: 0, type: '', startedAt: 0, ms: 0, timer: 0, uploaded: false,
  pointerUpAt: -1e9,
};

/** Whether the browser can record (asked once: it does not change). */
let recordable = null;

/** The browser can record: getUserMedia (a secure context: https or localhost) and a
 * MediaRecorder with a type the upstream reads. */
function recordSupported() {
  if (recordable === null) recordable = canRecord();
  return recordable;
}

function canRecord() {
  return !!(navigator.mediaDevices && typeof navigator.mediaDevices.getUserMedia === 'function'
    && typeof window.MediaRecorder === 'function' && typeof MediaRecorder.isTypeSupported === 'function'
    && pickRecordType((type) => MediaRecorder.isTypeSupported(type)));
}

const recording = () => rec.phase === 'starting' || rec.phase === 'recording';
const elapsedMs = () => (rec.phase === 'recording' ? performance.now() - rec.startedAt : 0);

/** Shows the record button when voice input is on, in the page's language; not usable while
 * an answer is coming. Called with the composer's other buttons (updateComposer). */
function updateRecord(streaming) {
  const btn = $('record');
  btn.hidden = !(state.config && state.config.speech) || !recordSupported();
  paintRecord();
  if (rec.phase === 'idle') btn.disabled = !!streaming;
}

/** Paints the recording state: the bar in place of the text box, the elapsed time, the hint,
 * the button's label. */
function paintRecord() {
  const btn = $('record');
  const active = rec.phase !== 'idle';
  $('composer').classList.toggle('recording', active);
  $('rec-bar').hidden = !active;
  $('rec-bar').classList.toggle('away', rec.away);
  btn.dataset.state = rec.phase;
  btn.classList.toggle('active', recording());
  btn.setAttribute('aria-label', t(recording() ? 'recStop' : 'recStart'));
  btn.title = t(recording() ? 'recStop' : 'recStart');
  btn.disabled = rec.phase === 'sending';
  const max = state.config && state.config.speech ? state.config.speech.max_seconds : 0;
  $('rec-time').textContent = formatElapsed(elapsedMs()) + ' / ' + formatElapsed(max * 1000);
  let hint = 'recClickHint';
  if (rec.phase === 'starting') hint = 'recStarting';
  else if (rec.phase === 'sending') hint = 'recSending';
  else if (rec.away) hint = 'recReleaseCancel';
  else if (rec.mode === 'hold') hint = 'recHoldHint';
  $('rec-hint').textContent = t(hint);
  // While held, the finger is on the record button; otherwise a visible way out.
  $('rec-cancel').hidden = rec.phase === 'sending' || rec.mode === 'hold';
}

function stopTracks(stream) {
  if (stream) for (const track of stream.getTracks()) track.stop();
}

/** Back to idle: the microphone released, nothing kept. */
function resetRecord() {
  clearInterval(rec.timer);
  stopTracks(rec.stream);
  Object.assign(rec, {
    phase: 'idle', mode: '', pointerId: null, endPointer: null, away: false,
    stream: null, recorder: null, chunks: [], bytes: 0, ms: 0, timer: 0, uploaded: false,
  });
  const conv = currentConv();
  updateRecord(!!(conv && state.streams.has(conv.id)));
}

/** What to say when the microphone could not be opened. */
function micErrorText(e) {
  const name = (e && e.name) || '';
  if (name === 'NotAllowedError' || name === 'SecurityError') return t('recMicDenied');
  if (name === 'NotFoundError' || name === 'OverconstrainedError') return t('recNoMic');
  if (name === 'NotReadableError' || name === 'AbortError') return t('recMicBusy');
  return t('recUnsupported');
}

/** Asks for the microphone and starts recording. */
async function startRecording(mode) {
  if (rec.phase !== 'idle' || !state.config || !state.config.speech) return;
  const conv = currentConv();
  if (conv && state.streams.has(conv.id)) return;
  hideBanner();
  const type = pickRecordType((ty) => MediaRecorder.isTypeSupported(ty));
  const run = ++rec.run;
  rec.phase = 'starting';
  rec.mode = mode;
  paintRecord();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
  } catch (e) {
    if (run !== rec.run) return;
    resetRecord();
    showBanner(micErrorText(e), false);
    announce($('error-text').textContent);
    return;
  }
  // Cancelled (or the page left) while the browser asked.
  if (run !== rec.run) { stopTracks(stream); return; }
  if (state.view !== 'chat') { stopTracks(stream); resetRecord(); return; }
  let recorder;
  try {
    recorder = new MediaRecorder(stream, { mimeType: type, audioBitsPerSecond: RECORD_BPS });
  } catch (_) {
    stopTracks(stream);
    resetRecord();
    showBanner(t('recUnsupported'), false);
    return;
  }
  Object.assign(rec, { stream, recorder, chunks: [], bytes: 0, type, phase: 'recording', startedAt: performance.now() });
  recorder.addEventListener('dataavailable', (e) => {
    if (run !== rec.run || !e.data || !e.data.size) return;
    rec.chunks.push(e.data);
    rec.bytes += e.data.size;
  });
  recorder.addEventListener('error', () => {
    if (run !== rec.run) return;
    resetRecord();
    showBanner(t('recFailed'), false);
  });
  recorder.addEventListener('stop', () => {
    if (run !== rec.run) return;
    // Stopped by itself (the microphone went away): what was said so far is sent.
    if (rec.phase === 'recording') toSending();
    if (rec.phase === 'sending') recorded(run);
  });
  // A piece a second: the size is known while recording, so a recording stops before
  // outgrowing `max_bytes` (a config whose limit comes before `max_seconds`).
  recorder.start(1000);
  rec.timer = setInterval(tick, 200);
  paintRecord();
  announce(t('recStarted'));
}

/** Every 200 ms while recording: the time shown; the stop at `max_seconds` or before
 * `max_bytes`. */
function tick() {
  if (rec.phase !== 'recording') return;
  if (state.view !== 'chat') { cancelRecording(); return; }
  const ms = elapsedMs();
  const limits = state.config.speech;
  $('rec-time').textContent = formatElapsed(ms) + ' / ' + formatElapsed(limits.max_seconds * 1000);
  // The next second's piece must still fit: stop while it does.
  const perSecond = ms > 1000 ? rec.bytes / (ms / 1000) : 0;
  if (ms >= limits.max_seconds * 1000 || rec.bytes + perSecond * 1.5 > limits.max_bytes) {
    announce(t('recAutoStop'));
    finishRecording();
  }
}

/** Stops recording and sends what was said. */
function finishRecording() {
  if (rec.phase === 'starting') {
    // Stopped before the microphone opened: nothing was said.
    cancelRecording(true);
    showBanner(t('recTooShort'), false);
    return;
  }
  if (rec.phase !== 'recording') return;
  toSending();
  // The recorder's last piece comes before its `stop` event, which sends (see startRecording).
  if (rec.recorder.state === 'inactive') { recorded(rec.run); return; }
  try {
    rec.recorder.stop();
  } catch (_) {
    resetRecord();
    showBanner(t('recFailed'), false);
  }
}

/** Recording over: its length kept, the timer stopped, the button busy. */
function toSending() {
  rec.ms = elapsedMs();
  clearInterval(rec.timer);
  rec.phase = 'sending';
  paintRecord();
}

/** The recorder has given its last piece: the microphone is released and the recording sent
 * (once). */
function recorded(run) {
  if (rec.uploaded) return;
  rec.uploaded = true;
  stopTracks(rec.stream);
  const type = (rec.chunks[0] && rec.chunks[0].type) || rec.recorder.mimeType || rec.type;
  uploadRecording(run, new Blob(rec.chunks, { type }), rec.ms);
}

/** Drops the recording in progress: nothing uploaded, nothing charged. */
function cancelRecording(quiet) {
  if (!recording()) return;
  rec.run++;
  const recorder = rec.recorder;
  if (recorder && recorder.state !== 'inactive') {
    try { recorder.stop(); } catch (_) { /* stopped already */ }
  }
  resetRecord();
  if (!quiet) announce(t('recCancelled'));
}

/** The words for a failed transcription. The server words its /v1 errors in the page's
 * language (a refused voice, the operator's texts); network and upstream failures get the
 * page's own. */
function transcriptionError(e) {
  if (e.status === 0) return e.message;
  if (e.code === 'insufficient_quota') return e.message || t('errQuota');
  if (e.code === 'rate_limit_exceeded') return e.message || t('errRate');
  if (e.status >= 500 || e.code === 'upstream_error' || e.code === 'service_unavailable') return t('recUpstream');
  return e.message || t('recFailed');
}

/** Checks the recording against the limits, uploads it and sends what was heard. */
async function uploadRecording(run, blob, ms) {
  const limits = state.config.speech;
  const problem = recordingProblem(ms, blob.size, limits);
  if (problem) {
    resetRecord();
    showBanner(problem === 'short' ? t('recTooShort') : t('recTooLong', { seconds: limits.max_seconds }), false);
    announce($('error-text').textContent);
    return;
  }
  const ext = audioExtension(blob.type) || audioExtension(rec.type);
  const form = new FormData();
  form.append('model', limits.model);
  form.append('response_format', 'json');
  form.append('file', blob, 'voice.' + ext);
  const token = state.token;
  let text = '';
  try {
    let res;
    try {
      res = await fetch('/v1/audio/transcriptions', {
        method: 'POST',
        headers: { Accept: 'application/json', 'Accept-Language': acceptLanguage(), Authorization: 'Bearer ' + token },
        body: form,
        cache: 'no-store',
      });
    } catch (_) {
      throw new ApiError(0, 'network', t('networkError'));
    }
    if (!res.ok) throw await errorFrom(res, '/v1/audio/transcriptions');
    const body = await res.json().catch(() => null);
    text = body && typeof body.text === 'string' ? body.text.trim() : '';
  } catch (e) {
    if (run !== rec.run) return;
    resetRecord();
    if (state.token !== token || state.view !== 'chat') return;
    if (e.status === 401) { sessionExpired(); return; }
    showBanner(transcriptionError(e), e.code === 'insufficient_quota' && !!(state.config && state.config.buy));
    announce($('error-text').textContent);
    refreshMe();
    return;
  }
  if (run !== rec.run) return;
  resetRecord();
  // Logged out (or in as someone else) meanwhile: not theirs to send.
  if (state.token !== token || state.view !== 'chat') return;
  refreshMe();
  if (!text) {
    showBanner(t('recNothingHeard'), false);
    return;
  }
  deliverTranscript(text);
}

/** Sends what was heard as the user's message; with a draft in the box, adds it there. */
function deliverTranscript(text) {
  const input = $('chat-input');
  if (input.value.trim()) {
    input.value = input.value.replace(/\s+$/, '') + ' ' + text;
    autosize();
    updateComposer();
    input.focus();
    announce(t('recAddedToDraft'));
    return;
  }
  input.value = text;
  autosize();
  updateComposer();
  send();
}

// ---------------------------------------------------------------- pointer and keyboard

function onRecordDown(e) {
  if (e.pointerType === 'mouse' && e.button !== 0) return;
  // A long press on a phone would select text or open a menu.
  if (e.pointerType !== 'mouse') e.preventDefault();
  if (recording()) {
    // The click that ends a click-started recording: sent when it is let go.
    if (rec.mode === 'click') rec.endPointer = e.pointerId;
    return;
  }
  if (rec.phase !== 'idle' || $('record').disabled) return;
  rec.pointerId = e.pointerId;
  rec.pressedAt = performance.now();
  rec.away = false;
  try { $('record').setPointerCapture(e.pointerId); } catch (_) { /* released already */ }
  startRecording('hold');
}

function onRecordMove(e) {
  if (e.pointerId !== rec.pointerId || rec.mode !== 'hold') return;
  const r = $('record').getBoundingClientRect();
  const away = e.clientX < r.left - CANCEL_SLOP || e.clientX > r.right + CANCEL_SLOP
    || e.clientY < r.top - CANCEL_SLOP || e.clientY > r.bottom + CANCEL_SLOP;
  if (away !== rec.away) {
    rec.away = away;
    paintRecord();
    if (away) announce(t('recReleaseCancel'));
  }
}

function onRecordUp(e) {
  rec.pointerUpAt = performance.now();
  if (rec.endPointer !== null && e.pointerId === rec.endPointer) {
    rec.endPointer = null;
    finishRecording();
    return;
  }
  if (e.pointerId !== rec.pointerId) return;
  rec.pointerId = null;
  if (rec.mode !== 'hold' || !recording()) return;
  if (rec.away) { cancelRecording(); return; }
  // A quick click, or a press the browser's permission question took: recording goes on
  // until the next click.
  if (rec.phase === 'starting' || performance.now() - rec.pressedAt < HOLD_MS) {
    rec.mode = 'click';
    paintRecord();
    return;
  }
  finishRecording();
}

function onRecordPointerCancel(e) {
  // The browser took the gesture. Asking for the microphone: the permission question took
  // it, and recording goes on, once allowed, until the next click. Else (a scroll, a system
  // dialog) a held recording is dropped.
  if (e.pointerId === rec.pointerId && rec.mode === 'hold') {
    if (rec.phase === 'starting') {
      rec.mode = 'click';
      paintRecord();
    } else {
      cancelRecording();
    }
  }
  if (e.pointerId === rec.endPointer) rec.endPointer = null;
  rec.pointerId = e.pointerId === rec.pointerId ? null : rec.pointerId;
}

/** A click the pointer handlers did not see: the keyboard (Enter, Space) or assistive tech. */
function onRecordClick(e) {
  // The click that follows a pointer's release was handled on release: Chromium and Firefox
  // say which pointer made it; elsewhere a pointer's click counts (`detail`) and follows a
  // release; the keyboard's counts nothing.
  if (e.pointerType || (e.detail > 0 && performance.now() - rec.pointerUpAt < 1000)) return;
  if (rec.phase === 'idle') startRecording('click');
  else if (recording()) finishRecording();
}

function bindRecord() {
  const btn = $('record');
  btn.addEventListener('pointerdown', onRecordDown);
  btn.addEventListener('pointermove', onRecordMove);
  btn.addEventListener('pointerup', onRecordUp);
  btn.addEventListener('pointercancel', onRecordPointerCancel);
  btn.addEventListener('click', onRecordClick);
  btn.addEventListener('contextmenu', (e) => e.preventDefault());
  $('rec-cancel').addEventListener('click', () => cancelRecording());
  // Esc cancels a recording before anything else hears it (panels, stopping an answer).
  window.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape' || !recording()) return;
    e.preventDefault();
    e.stopPropagation();
    cancelRecording();
  }, true);
  // The phone locked or another app came up: a recording nobody is holding is dropped.
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'hidden' && recording()) cancelRecording();
  });
  paintRecord();
}
