// Loads the web chat page's pure parts into Node for tests and benchmarks: text.js, math.js,
// render.js and record.js (its pure helpers), run together in one function scope as the
// browser runs them in one global scope. `require('./page_js.js')` is what render.js and
// record.js export (renderMarkdown, texToMathml, pickRecordType, ...).
const fs = require('fs');
const path = require('path');

const DIR = path.join(__dirname, '..', '..', 'src', 'channels', 'web');
const source = ['text.js', 'math.js', 'render.js', 'record.js']
  .map((f) => fs.readFileSync(path.join(DIR, f), 'utf8'))
  .join('\n;\n');
const mod = { exports: {} };
new Function('module', source)(mod);
module.exports = mod.exports;
