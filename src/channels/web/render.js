/* The web chat page's pure parts: small utilities, the language (`t()`), the syntax
 * highlighter, markdown (with math from math.js) and the SSE parser. No DOM state here, so Node
 * can load text.js + math.js + render.js to unit-test them (scripts/e2e/page_js.js).
 *
 * One of the page's scripts (index.html loads them in order, all `defer`): classic scripts
 * sharing one global scope, so a name declared here is seen by the files loaded after it.
 */
'use strict';

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

const LANG_KEY = 'chatrelay.lang';
let lang = readStore(LANG_KEY) === 'en' ? 'en' : 'zh';

/** The UI string `key` in the current language, with `{name}` filled from `params`. */
function t(key, params) {
  const s = I18N[lang][key] ?? I18N.zh[key] ?? key;
  if (!params || typeof s !== 'string') return s;
  return s.replace(/\{(\w+)\}/g, (m, k) => (k in params ? String(params[k]) : m));
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

// Node loads text.js + math.js + render.js to unit-test the pure parts; the page never takes
// this path.
if (typeof document === 'undefined' && typeof module !== 'undefined') {
  module.exports = { renderMarkdown, renderInline, texToMathml, splitStable, highlight, createSseParser, formatPrice, esc, safeUrl };
}
