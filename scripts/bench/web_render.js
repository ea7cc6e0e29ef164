// The web page's markdown renderer on a long answer (issue 26): rendering the whole answer
// on every frame, as the page did, against rendering only the tail after splitStable, as it
// does now. Run: node scripts/bench/web_render.js
const path = require('path');
const m = require(path.join(__dirname, '..', 'e2e', 'page_js.js'));
const block = '## 小节\n\n这是一段说明文字，包含 **粗体** 和 `代码` 以及公式 $a^2+b^2=c^2$。\n\n' +
  '| 列一 | 列二 |\n| --- | --- |\n| 1 | 2 |\n\n```python\ndef f(x):\n    return x * 2  # 注释\n```\n\n- 一项\n- 二项\n\n';
let src = '';
while (src.length < 30000) src += block;
const per = (f, n) => {
  const s = process.hrtime.bigint();
  for (let i = 0; i < n; i++) f(i);
  return Number(process.hrtime.bigint() - s) / 1e6 / n;
};
// A different text each round, so the highlighter's cache does not help either way.
const full = per((i) => m.renderMarkdown(src + i), 50);
const tail = per((i) => m.renderMarkdown(m.splitStable(src + i).tail), 50);
console.log(JSON.stringify({ chars: src.length, full_ms: +full.toFixed(2), split_and_tail_ms: +tail.toFixed(2) }));
