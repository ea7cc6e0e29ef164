// The console's dashboard: today / 7 / 30 days of `/admin/stats` (the figures `chatrelay admin
// stats` prints) as cards (new users, paid credits granted against credits spent...), a chart
// of messages per day by platform (SVG), revenue by channel and by payment method, upstream health (`/admin/upstreams`) and a table per day.
"use strict";
(() => {
texts({
  zh: {
    nav_dashboard: "概览",
    today: "今天", d7: "7 天", d30: "30 天", chart: "每日消息（按平台）",
    revenue_by_channel: "收入（按渠道）", upstreams: "上游健康", days: "每日明细",
    messages_total: "消息", active_users: "活跃用户（日峰值）", credits_charged: "消耗积分",
    llm_cost_fen: "LLM 成本 ¥", revenue_fen: "收入 ¥", margin: "收入 − 退款 − 成本 ¥", active: "活跃用户", orders_paid: "付费订单",
    refunds_fen: "退款 ¥", codes_redeemed: "兑换码", code_credits: "兑换积分",
    plans_sold: "会员售出", plan_sales_fen: "会员收入 ¥",
    new_users: "新用户", credits_granted: "发放积分", revenue_by_method: "收入（按支付方式）",
    id: "上游", state: "状态", requests: "请求", errors: "错误", error_rate: "近期错误率",
    latency: "延迟 ms", last_error: "最近错误", date: "日期",
    up: "正常", degraded: "降级", down: "故障", range: "统计区间",
    p_mp: "公众号", p_wecom: "企业微信", p_zsxq: "知识星球", p_tg: "Telegram", p_web: "网页",
    p_api: "API",
  },
  en: {
    nav_dashboard: "Dashboard",
    today: "Today", d7: "7 days", d30: "30 days", chart: "Messages per day by platform",
    revenue_by_channel: "Revenue by channel", upstreams: "Upstream health", days: "Per day",
    messages_total: "Messages", active_users: "Active users (daily peak)",
    credits_charged: "Credits spent", llm_cost_fen: "LLM cost ¥", revenue_fen: "Revenue ¥",
    margin: "Revenue − refunds − cost ¥", active: "Active users", orders_paid: "Paid orders", refunds_fen: "Refunds ¥",
    codes_redeemed: "Codes redeemed", code_credits: "Code credits", plans_sold: "Plans sold",
    plan_sales_fen: "Plan sales ¥",
    new_users: "New users", credits_granted: "Credits granted",
    revenue_by_method: "Revenue by payment method",
    id: "Upstream", state: "State", requests: "Requests", errors: "Errors",
    error_rate: "Recent error rate", latency: "Latency ms", last_error: "Last error",
    date: "Day", up: "up", degraded: "degraded", down: "down",
    range: "Period",
    p_mp: "Official Account", p_wecom: "WeCom", p_zsxq: "zsxq", p_tg: "Telegram", p_web: "Web",
    p_api: "API",
  },
});

// Summed over the period; `fen` ones are shown as yuan.
const SUMS = ["new_users", "messages_total", "credits_granted", "credits_charged", "llm_cost_fen", "revenue_fen", "orders_paid",
  "refunds_fen", "codes_redeemed", "code_credits", "plans_sold", "plan_sales_fen"];
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

let days = 1;
let last = null; // { stats, upstreams } as fetched

async function load() {
  $("dash-error").textContent = "";
  for (const b of document.querySelectorAll(".periods button")) {
    b.classList.toggle("on", Number(b.dataset.days) === days);
  }
  try {
    const [s, u] = await Promise.all([api("/admin/stats?days=" + days), api("/admin/upstreams")]);
    if (!s.ok || !u.ok) throw new Error((s.ok ? u : s).status);
    last = { stats: await s.json(), upstreams: await u.json(), days };
    draw(last);
  } catch (e) {
    $("dash-error").textContent = t("failed") + e.message;
  }
}

function card(key, value, shown) {
  return el("div", { class: "card", "data-key": key, "data-value": String(value) },
    el("div", { class: "label" }, t(key)), el("div", { class: "value" }, shown));
}

function draw({ stats, upstreams }) {
  const sum = (k) => stats.reduce((a, d) => a + (d[k] || 0), 0);
  const first = stats[0]?.date ?? "", lastDay = stats[stats.length - 1]?.date ?? "";
  $("range").textContent = t("range") + ": " + (first === lastDay ? first : first + " — " + lastDay);
  const cards = $("cards");
  cards.replaceChildren();
  const peak = stats.reduce((a, d) => Math.max(a, d.active_users || 0), 0);
  cards.append(card("active_users", peak, String(peak)));
  for (const k of SUMS) {
    const v = sum(k);
    cards.append(card(k, v, k.endsWith("_fen") ? yuan(v) : String(v)));
  }
  const margin = sum("revenue_fen") - sum("refunds_fen") - sum("llm_cost_fen");
  cards.append(card("margin", margin, yuan(margin)));

  breakdown("channels", "data-channel", stats, "revenue_by_channel");
  breakdown("methods", "data-method", stats, "revenue_by_method");

  $("chart").replaceChildren(...chart(stats));
  upstreamTable(upstreams);
  dayTable(stats);
}

// Fen by name (channel, method) summed over the period, as cards into box `id`.
function breakdown(id, attr, stats, key) {
  const sums = {};
  for (const d of stats) for (const [c, f] of Object.entries(d[key] || {})) sums[c] = (sums[c] || 0) + f;
  const box = $(id);
  box.replaceChildren();
  const names = Object.keys(sums).sort();
  if (!names.length) box.append(el("p", { class: "muted" }, t("none")));
  for (const c of names) {
    box.append(el("div", { class: "card", [attr]: c, "data-value": String(sums[c]) },
      el("div", { class: "label" }, c), el("div", { class: "value" }, yuan(sums[c]))));
  }
}

// A platform's name in the console's language (the stats name them by their short ids).
function platformName(p) {
  return t("p_" + p) === "p_" + p ? p : t("p_" + p);
}

// Messages per day, one stacked bar per day, one colour per platform.
function chart(stats) {
  const platforms = [...new Set(stats.flatMap((d) => Object.keys(d.messages || {})))].sort();
  const total = (d, p) => Object.values((d.messages || {})[p] || {}).reduce((a, n) => a + n, 0);
  const max = Math.max(1, ...stats.map((d) => platforms.reduce((a, p) => a + total(d, p), 0)));
  // Drawn at the box's own width, so that the labels keep their size on a phone.
  const W = Math.max(300, Math.round($("chart").clientWidth - 16)), H = 220, L = 40, B = 24, top = 10;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", t("chart"));
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  const plotH = H - B - top, plotW = W - L - 8;
  add("line", { x1: L, y1: top + plotH, x2: W - 8, y2: top + plotH, stroke: "#9aa3b2" });
  add("text", { x: L - 4, y: top + 10, "text-anchor": "end", "font-size": 11, fill: "#5b6475" }, String(max));
  add("text", { x: L - 4, y: top + plotH, "text-anchor": "end", "font-size": 11, fill: "#5b6475" }, "0");
  const slot = plotW / Math.max(1, stats.length);
  const barW = Math.max(2, slot * 0.7);
  stats.forEach((d, i) => {
    let y = top + plotH;
    const x = L + i * slot + (slot - barW) / 2;
    platforms.forEach((p, j) => {
      const n = total(d, p);
      if (!n) return;
      const h = (n / max) * plotH;
      y -= h;
      const r = add("rect", { x: x.toFixed(1), y: y.toFixed(1), width: barW.toFixed(1), height: h.toFixed(1),
        fill: PALETTE[j % PALETTE.length], "data-date": d.date, "data-platform": p, "data-count": n });
      const title = document.createElementNS(ns, "title");
      title.textContent = `${d.date} ${p}: ${n}`;
      r.append(title);
    });
    const every = Math.ceil(stats.length / 8);
    if (i % every === 0) {
      add("text", { x: (x + barW / 2).toFixed(1), y: H - 6, "text-anchor": "middle", "font-size": 11, fill: "#5b6475" }, d.date.slice(5));
    }
  });
  const legend = el("div", { class: "legend" });
  platforms.forEach((p, j) => {
    const sw = el("i");
    sw.style.background = PALETTE[j % PALETTE.length];
    legend.append(el("span", {}, sw, platformName(p)));
  });
  return [svg, legend];
}

function upstreamTable(ups) {
  table("upstreams", [t("id"), t("state"), t("requests"), t("errors"), t("error_rate"), t("latency"), t("last_error")],
    ups.map((u) => [u.id, t(u.state), u.requests_total, u.errors_total,
      (100 * (u.recent_error_rate || 0)).toFixed(0) + "%", u.latency_ms ?? "—", u.last_error ?? ""]));
  const rows = $("upstreams").querySelectorAll("tr");
  ups.forEach((u, i) => rows[i + 1]?.children[1]?.classList.add("state-" + u.state));
}

function dayTable(stats) {
  table("days", [t("date"), t("active"), t("new_users"), t("messages_total"), t("credits_charged"), t("llm_cost_fen"),
    t("credits_granted"), t("orders_paid"), t("revenue_fen"), t("refunds_fen"), t("codes_redeemed")],
    [...stats].reverse().map((d) => [d.date, d.active_users, d.new_users, d.messages_total, d.credits_charged,
      yuan(d.llm_cost_fen), d.credits_granted, d.orders_paid, yuan(d.revenue_fen), yuan(d.refunds_fen), d.codes_redeemed]));
}


page({
  name: "dashboard",
  label: "nav_dashboard",
  show() {
    for (const b of document.querySelectorAll(".periods button")) {
      b.onclick = () => { days = Number(b.dataset.days); load(); };
    }
    if (last) draw(last);
    load();
  },
});
})();
