/* TeX to MathML for the web chat page's formulas (`texToMathml`), used by the markdown renderer
 * in render.js.
 *
 * One of the page's scripts (index.html loads them in order, all `defer`): classic scripts
 * sharing one global scope, so a name declared here is seen by the files loaded after it.
 */
'use strict';

// ---------------------------------------------------------------- math (TeX -> MathML)
// A small TeX subset rendered as MathML, which browsers draw natively (no fonts or
// scripts to load). Everything from the TeX source is escaped; only fixed MathML tags
// are produced. Unknown commands are shown as their text, never dropped.

const MATH_SYMBOLS = {
  alpha: 'α', beta: 'β', gamma: 'γ', delta: 'δ', epsilon: 'ϵ', varepsilon: 'ε', zeta: 'ζ', eta: 'η',
  theta: 'θ', vartheta: 'ϑ', iota: 'ι', kappa: 'κ', lambda: 'λ', mu: 'μ', nu: 'ν', xi: 'ξ', pi: 'π',
  varpi: 'ϖ', rho: 'ρ', varrho: 'ϱ', sigma: 'σ', varsigma: 'ς', tau: 'τ', upsilon: 'υ', phi: 'ϕ',
  varphi: 'φ', chi: 'χ', psi: 'ψ', omega: 'ω', Gamma: 'Γ', Delta: 'Δ', Theta: 'Θ', Lambda: 'Λ',
  Xi: 'Ξ', Pi: 'Π', Sigma: 'Σ', Upsilon: 'Υ', Phi: 'Φ', Psi: 'Ψ', Omega: 'Ω',
  infty: '∞', partial: '∂', nabla: '∇', hbar: 'ℏ', ell: 'ℓ', emptyset: '∅', varnothing: '∅',
  angle: '∠', degree: '°', prime: '′', aleph: 'ℵ', Re: 'ℜ', Im: 'ℑ',
};
const MATH_OPS = {
  cdot: '⋅', times: '×', div: '÷', pm: '±', mp: '∓', ast: '∗', star: '⋆', circ: '∘', bullet: '∙',
  le: '≤', leq: '≤', ge: '≥', geq: '≥', ne: '≠', neq: '≠', approx: '≈', equiv: '≡', sim: '∼',
  simeq: '≃', cong: '≅', propto: '∝', ll: '≪', gg: '≫', in: '∈', notin: '∉', ni: '∋',
  subset: '⊂', supset: '⊃', subseteq: '⊆', supseteq: '⊇', cup: '∪', cap: '∩', setminus: '∖',
  wedge: '∧', land: '∧', vee: '∨', lor: '∨', neg: '¬', lnot: '¬', forall: '∀', exists: '∃',
  to: '→', rightarrow: '→', leftarrow: '←', gets: '←', leftrightarrow: '↔', Rightarrow: '⇒',
  Leftarrow: '⇐', Leftrightarrow: '⇔', implies: '⟹', iff: '⟺', mapsto: '↦', uparrow: '↑',
  downarrow: '↓', perp: '⊥', parallel: '∥', mid: '∣', oplus: '⊕', otimes: '⊗',
  ldots: '…', cdots: '⋯', vdots: '⋮', ddots: '⋱', dots: '…', therefore: '∴', because: '∵',
  langle: '⟨', rangle: '⟩', lfloor: '⌊', rfloor: '⌋', lceil: '⌈', rceil: '⌉', vert: '|', Vert: '‖',
  '{': '{', '}': '}', '|': '‖', lbrace: '{', rbrace: '}',
};
/** Big operators: limits go under and over in display math. */
const MATH_BIG = {
  sum: '∑', prod: '∏', coprod: '∐', int: '∫', iint: '∬', iiint: '∭', oint: '∮',
  bigcup: '⋃', bigcap: '⋂', bigoplus: '⨁', bigotimes: '⨂',
};
const MATH_FUNCS = 'sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln lg exp lim liminf limsup max min sup inf det dim ker deg gcd arg Pr mod'.split(' ');
const MATH_LIMIT_FUNCS = new Set(['lim', 'liminf', 'limsup', 'max', 'min', 'sup', 'inf', 'det', 'gcd', 'Pr']);
const MATH_ACCENTS = { hat: '^', widehat: '^', bar: '¯', overline: '¯', vec: '→', dot: '˙', ddot: '¨', tilde: '~', widetilde: '~' };
const MATH_SPACES = { ',': '0.1667em', ':': '0.2222em', '>': '0.2222em', ';': '0.2778em', '!': '-0.1667em', quad: '1em', qquad: '2em', ' ': '0.25em', enspace: '0.5em' };
const MATH_ENVS = { matrix: ['', ''], pmatrix: ['(', ')'], bmatrix: ['[', ']'], Bmatrix: ['{', '}'], vmatrix: ['|', '|'], Vmatrix: ['‖', '‖'], cases: ['{', ''], aligned: ['', ''], align: ['', ''], 'align*': ['', ''], array: ['', ''], gathered: ['', ''], split: ['', ''] };

/** Letters in a font TeX names, as Unicode mathematical alphanumerics (MathML Core only
 * knows mathvariant="normal"). */
function mathFont(font, text) {
  const bases = { mathbb: [0x1D538, null], mathbf: [0x1D400, 0x1D7CE], mathcal: [0x1D49C, null], mathfrak: [0x1D504, null], boldsymbol: [0x1D400, 0x1D7CE] };
  const holes = { mathbb: { C: 'ℂ', H: 'ℍ', N: 'ℕ', P: 'ℙ', Q: 'ℚ', R: 'ℝ', Z: 'ℤ' }, mathcal: { B: 'ℬ', E: 'ℰ', F: 'ℱ', H: 'ℋ', I: 'ℐ', L: 'ℒ', M: 'ℳ', R: 'ℛ' }, mathfrak: { C: 'ℭ', H: 'ℌ', I: 'ℑ', R: 'ℜ', Z: 'ℨ' } };
  const b = bases[font];
  if (!b) return text;
  let out = '';
  for (const ch of text) {
    const h = holes[font] && holes[font][ch];
    const c = ch.charCodeAt(0);
    if (h) out += h;
    else if (c >= 65 && c <= 90) out += String.fromCodePoint(b[0] + c - 65);
    else if (c >= 97 && c <= 122 && font !== 'mathbb' && font !== 'mathcal') out += String.fromCodePoint(b[0] + 26 + c - 97);
    else if (c >= 48 && c <= 57 && b[1]) out += String.fromCodePoint(b[1] + c - 48);
    else if (c >= 48 && c <= 57 && font === 'mathbb') out += String.fromCodePoint(0x1D7D8 + c - 48);
    else out += ch;
  }
  return out;
}

const MATH_MAX_DEPTH = 40;

/** TeX source to a MathML `<math>` element's HTML (`display` for a block formula). */
function texToMathml(src, display) {
  const s = String(src);
  let pos = 0;
  let depth = 0;

  const tag = (name, inner, attrs) => '<' + name + (attrs || '') + '>' + inner + '</' + name + '>';
  const mi = (x, normal) => tag('mi', esc(x), normal || [...x].length > 1 ? ' mathvariant="normal"' : '');
  const mo = (x, attrs) => tag('mo', esc(x), attrs);
  const mn = (x) => tag('mn', esc(x));
  const mtext = (x) => tag('mtext', esc(x));
  const row = (items) => (items.length === 1 ? items[0] : tag('mrow', items.join('')));

  function skipSpace() { while (pos < s.length && /\s/.test(s[pos])) pos++; }

  /** The next command name after a backslash (letters, or one other character). */
  function commandName() {
    const m = /^[A-Za-z]+\*?/.exec(s.slice(pos));
    if (m) { pos += m[0].length; return m[0]; }
    return pos < s.length ? s[pos++] : '';
  }

  /** A `{...}` group's raw text (for \text and environment names), or one character. */
  function rawGroup() {
    skipSpace();
    if (s[pos] !== '{') return pos < s.length ? s[pos++] : '';
    let level = 0;
    const start = pos + 1;
    for (; pos < s.length; pos++) {
      if (s[pos] === '\\') { pos++; continue; }
      if (s[pos] === '{') level++;
      else if (s[pos] === '}' && --level === 0) { pos++; return s.slice(start, pos - 1); }
    }
    return s.slice(start);
  }

  /** One argument: a group, a command, or one character. */
  function arg() {
    skipSpace();
    if (s[pos] === '{') { pos++; const r = row(list('}')); return r || row([]); }
    const a = atom();
    return a ? a.html : tag('mrow', '');
  }

  /** An optional `[...]` argument. */
  function optArg() {
    skipSpace();
    if (s[pos] !== '[') return null;
    pos++;
    return row(list(']'));
  }

  /** A delimiter after \left, \right, \big...: its text ('' for "."). */
  function delimiter() {
    skipSpace();
    if (s[pos] === '\\') {
      pos++;
      const name = commandName();
      return MATH_OPS[name] || MATH_SYMBOLS[name] || name;
    }
    const c = pos < s.length ? s[pos++] : '';
    return c === '.' ? '' : c;
  }

  /** An environment body: rows split by \\, cells by &. */
  function environment(name) {
    const rows = [[]];
    let cell = [];
    if (name === 'array') rawGroup(); // column spec
    for (;;) {
      const items = list('&', '\\\\', '\\end');
      cell = row(items);
      rows[rows.length - 1].push(cell);
      if (s.startsWith('&', pos)) { pos += 1; continue; }
      if (s.startsWith('\\\\', pos)) { pos += 2; rows.push([]); continue; }
      if (s.startsWith('\\end', pos)) { pos += 4; rawGroup(); }
      break;
    }
    if (rows.length > 1 && rows[rows.length - 1].length === 1 && rows[rows.length - 1][0] === tag('mrow', '')) rows.pop();
    const left = name === 'cases' || /^align|^split|^gathered/.test(name) ? ' columnalign="left"' : '';
    const table = tag('mtable', rows.map((r) => tag('mtr', r.map((c) => tag('mtd', c)).join(''))).join(''), left);
    const [open, close] = MATH_ENVS[name] || ['', ''];
    if (!open && !close) return table;
    return tag('mrow', (open ? mo(open, ' stretchy="true"') : '') + table + (close ? mo(close, ' stretchy="true"') : ''));
  }

  /** One atom (without scripts): returns { html, big } or null at the end or a closer. */
  function atom() {
    skipSpace();
    if (pos >= s.length) return null;
    const c = s[pos];
    if (c === '{') { pos++; return { html: row(list('}')) || tag('mrow', '') }; }
    if (c === '}' || c === ']' || c === '&') return null;
    if (/[0-9.]/.test(c)) {
      const m = /^(?:\d+(?:\.\d+)?|\.\d+|\.)/.exec(s.slice(pos));
      pos += m[0].length;
      return { html: m[0] === '.' ? mo('.') : mn(m[0]) };
    }
    if (/[A-Za-z]/.test(c)) { pos++; return { html: mi(c) }; }
    if (c === '\\') {
      pos++;
      const name = commandName();
      if (name === '\\') return { html: '' };
      if (name in MATH_SYMBOLS) return { html: mi(MATH_SYMBOLS[name]) };
      if (name in MATH_OPS) return { html: mo(MATH_OPS[name]) };
      if (name in MATH_BIG) return { html: mo(MATH_BIG[name], display ? ' largeop="true" movablelimits="true"' : ''), big: display && !/int$/.test(name) };
      if (MATH_FUNCS.includes(name)) return { html: mi(name, true), big: display && MATH_LIMIT_FUNCS.has(name) };
      if (name in MATH_SPACES) return { html: '<mspace width="' + MATH_SPACES[name] + '"></mspace>' };
      if (name === 'frac' || name === 'dfrac' || name === 'tfrac' || name === 'cfrac') { const a = arg(); return { html: tag('mfrac', a + arg()) }; }
      if (name === 'binom' || name === 'dbinom' || name === 'tbinom') { const a = arg(); return { html: tag('mrow', mo('(') + tag('mfrac', a + arg(), ' linethickness="0"') + mo(')')) }; }
      if (name === 'sqrt') { const n = optArg(); const a = arg(); return { html: n ? tag('mroot', a + n) : tag('msqrt', a) }; }
      if (name === 'text' || name === 'textrm' || name === 'mbox' || name === 'textit' || name === 'textbf') return { html: mtext(rawGroup()) };
      if (name === 'mathrm' || name === 'operatorname' || name === 'operatorname*') return { html: mi(rawGroup().replace(/\s+/g, ''), true) };
      if (name === 'mathit') return { html: arg() };
      if (name in { mathbb: 1, mathbf: 1, mathcal: 1, mathfrak: 1, boldsymbol: 1, bm: 1 }) {
        const text = rawGroup();
        return { html: mi(mathFont(name === 'bm' ? 'boldsymbol' : name, text.replace(/\s+/g, '')), true) };
      }
      if (name in MATH_ACCENTS) { const a = arg(); return { html: tag('mover', a + mo(MATH_ACCENTS[name], ' stretchy="' + (/^(wide|over)/.test(name) ? 'true' : 'false') + '"'), ' accent="true"') }; }
      if (name === 'underline') return { html: tag('munder', arg() + mo('_'), ' accentunder="true"') };
      if (name === 'overbrace' || name === 'underbrace') { const a = arg(); return { html: name === 'overbrace' ? tag('mover', a + mo('⏞')) : tag('munder', a + mo('⏟')) }; }
      if (name === 'left' || name === 'right' || /^[bB]ig+[lr]?$/.test(name)) {
        const d = delimiter();
        return { html: d ? mo(d, name === 'left' || name === 'right' ? ' stretchy="true"' : '') : '' };
      }
      if (name === 'begin') {
        const env = rawGroup();
        if (++depth > MATH_MAX_DEPTH) return { html: mtext('…') };
        const html = environment(env);
        depth--;
        return { html };
      }
      if (name === 'end') { rawGroup(); return { html: '' }; }
      if (name in { displaystyle: 1, textstyle: 1, scriptstyle: 1, limits: 1, nolimits: 1, nonumber: 1, notag: 1 }) return { html: '' };
      if (name === 'not') { const a = atom(); return { html: a ? tag('mrow', a.html + mo('̸')) : '' }; }
      return { html: tag('mtext', esc('\\' + name), ' class="math-unknown"') };
    }
    pos++;
    if (c === '^' || c === '_') return { html: '' }; // a script with nothing before it
    if (c === "'") return { html: mo('′') };
    if (c === '~') return { html: '<mspace width="0.25em"></mspace>' };
    if (/[+\-*/=<>()[\]|,;:!?]/.test(c)) return { html: mo(c === '-' ? '−' : c === '*' ? '∗' : c) };
    return { html: mi(c) };
  }

  /** Atoms with their scripts until `stops` (strings) or the end. */
  function list(...stops) {
    const items = [];
    if (++depth > MATH_MAX_DEPTH) { pos = s.length; depth--; return [mtext('…')]; }
    for (;;) {
      skipSpace();
      if (pos >= s.length) break;
      if (stops.some((x) => s.startsWith(x, pos))) {
        if (stops[0] === '}' || stops[0] === ']') pos += 1;
        break;
      }
      if (stops.length === 0 && (s[pos] === '}' || s[pos] === ']')) { items.push(mo(s[pos++])); continue; }
      if (s[pos] === '&' && stops.indexOf('&') < 0) { pos++; continue; }
      const base = atom();
      if (!base) { if (pos < s.length) items.push(mo(s[pos++])); continue; }
      let sub = null;
      let sup = null;
      for (;;) {
        skipSpace();
        if (s[pos] === '_' && sub === null) { pos++; sub = arg(); } else if (s[pos] === '^' && sup === null) { pos++; sup = arg(); } else if (s[pos] === "'" && sup === null) { pos++; sup = mo('′'); } else break;
      }
      const b = base.html || tag('mrow', '');
      if (sub === null && sup === null) { if (base.html) items.push(base.html); continue; }
      if (base.big) {
        items.push(sub !== null && sup !== null ? tag('munderover', b + sub + sup) : sub !== null ? tag('munder', b + sub) : tag('mover', b + sup));
      } else {
        items.push(sub !== null && sup !== null ? tag('msubsup', b + sub + sup) : sub !== null ? tag('msub', b + sub) : tag('msup', b + sup));
      }
    }
    depth--;
    return items;
  }

  const body = list();
  return '<math class="math"' + (display ? ' display="block"' : '') + '>' + tag('mrow', body.join('')) + '</math>';
}
