// The console's orders: a list filtered by status, channel, method, user and creation days
// (`GET /admin/orders`, the filters `chatrelay admin order list` has), its CSV export (a link
// to `/admin/orders.csv` with the same filters), and an order's page (`#/orders/<id>`: the
// order and its provider events) with a refund behind a confirmation that names the amount
// and the credits taken back (`POST /admin/orders/<id>/refund`).
"use strict";
(() => {
texts({
  zh: {
    nav_orders: "订单", o_status: "状态", o_channel: "渠道", o_method: "支付方式", o_from: "起始日期",
    o_to: "截止日期", o_uid: "用户 ID", o_any: "全部", o_csv: "导出 CSV", o_id: "订单号",
    o_created: "创建时间", o_user: "用户", o_product: "商品", o_amount: "金额 ¥", o_credits: "积分",
    o_paid: "支付时间", o_refunded: "退款时间", o_trade: "支付平台单号", o_events: "订单事件",
    o_time: "时间", o_event: "事件", o_detail: "详情", o_back: "← 返回订单列表", o_refund: "退款",
    o_refund_confirm: "确认退款 ¥{amount}（订单 {id}），并收回用户 {uid} 的 {credits} 积分（余额不足时收回至 0）？",
    o_refund_plan: "确认退款 ¥{amount}（订单 {id}），并收回用户 {uid} 的会员「{plan}」（{days} 天）？",
    o_refund_done: "已退款", o_reason_needed: "请填写退款原因", o_plan: "会员",
    s_created: "待支付", s_credited: "已到账", s_closed: "已关闭", s_refunded: "已退款",
    c_wechat: "微信支付", c_alipay: "支付宝", o_shown: "显示 {n} 笔（最多 100 笔，导出不限）",
  },
  en: {
    nav_orders: "Orders", o_status: "Status", o_channel: "Channel", o_method: "Method", o_from: "From",
    o_to: "To", o_uid: "User id", o_any: "Any", o_csv: "Export CSV", o_id: "Order",
    o_created: "Created", o_user: "User", o_product: "Product", o_amount: "Amount ¥", o_credits: "Credits",
    o_paid: "Paid", o_refunded: "Refunded", o_trade: "Provider trade no", o_events: "Order events",
    o_time: "Time", o_event: "Event", o_detail: "Detail", o_back: "← Back to orders", o_refund: "Refund",
    o_refund_confirm: "Refund ¥{amount} (order {id}) and take {credits} credits back from user {uid} (down to 0 at most)?",
    o_refund_plan: "Refund ¥{amount} (order {id}) and take the plan \"{plan}\" ({days} days) back from user {uid}?",
    o_refund_done: "Refunded", o_reason_needed: "Give a reason for the refund", o_plan: "Plan",
    s_created: "awaiting payment", s_credited: "credited", s_closed: "closed", s_refunded: "refunded",
    c_wechat: "WeChat Pay", c_alipay: "Alipay", o_shown: "{n} shown (at most 100; the export has all)",
  },
});

const STATUSES = ["created", "credited", "closed", "refunded"];
const CHANNELS = ["wechat", "alipay"];
const METHODS = ["native", "jsapi", "h5", "precreate", "wap", "page"];
const FIELDS = ["status", "channel", "method", "from", "to", "uid"];

// The filter shown, kept across visits.
const filter = { status: "", channel: "", method: "", from: "", to: "", uid: "" };

const fill = (text, values) => text.replace(/\{(\w+)\}/g, (_, k) => String(values[k] ?? ""));
const statusName = (s) => (t("s_" + s) === "s_" + s ? s : t("s_" + s));
// An order from before payment methods is its channel's QR order (as the server reads it).
const methodOf = (o) => o.method || { wechat: "native", alipay: "precreate" }[o.channel] || "";
const channelName = (c) => (t("c_" + c) === "c_" + c ? c : t("c_" + c));

function query(extra = {}) {
  const q = new URLSearchParams();
  for (const k of FIELDS) if (filter[k]) q.set(k, filter[k]);
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

function select(name, values, label) {
  const s = el("select", { id: "of-" + name, name });
  s.append(el("option", { value: "" }, t("o_any")));
  for (const v of values) s.append(el("option", { value: v }, label(v)));
  s.value = filter[name];
  return s;
}

function field(label, input) {
  return el("label", { class: "field" }, el("span", {}, t(label)), input);
}

function showList(sec) {
  const form = el("form", { id: "orders-filter", class: "filters" },
    field("o_status", select("status", STATUSES, statusName)),
    field("o_channel", select("channel", CHANNELS, channelName)),
    field("o_method", select("method", METHODS, (m) => m)),
    field("o_from", el("input", { id: "of-from", name: "from", type: "date", value: filter.from })),
    field("o_to", el("input", { id: "of-to", name: "to", type: "date", value: filter.to })),
    field("o_uid", el("input", { id: "of-uid", name: "uid", type: "number", min: "1", value: filter.uid })),
    el("div", { class: "actions" },
      el("button", { type: "submit", class: "primary" }, t("search")),
      el("a", { id: "orders-csv", class: "button", href: "/admin/orders.csv" + query(), download: "orders.csv" }, t("o_csv"))));
  const count = el("p", { id: "orders-count", class: "muted" });
  const tb = el("table", { id: "orders-table" });
  const err = el("p", { id: "orders-error", class: "error", role: "alert" });
  sec.replaceChildren(form, count, el("div", { class: "scroll" }, tb), err);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    for (const k of FIELDS) filter[k] = form.elements[k].value.trim();
    showList(sec);
  });
  load(tb, count, err);
}

async function load(tb, count, err) {
  tb.replaceChildren(el("tr", {}, el("td", {}, t("loading"))));
  try {
    const orders = await apiJson("/admin/orders" + query({ limit: 100 }));
    count.textContent = fill(t("o_shown"), { n: orders.length });
    table(tb, [t("o_id"), t("o_created"), t("o_user"), t("o_product"), t("o_channel"), t("o_method"),
      t("o_amount"), t("o_credits"), t("o_status")],
    orders.map((o) => [
      el("a", { href: "#/orders/" + encodeURIComponent(o.id), "data-order": o.id }, o.id),
      when(o.created_at_ms), o.uid, o.product_name, channelName(o.channel), methodOf(o),
      yuan(o.amount_fen), o.credits, el("span", { class: "status-" + o.status }, statusName(o.status)),
    ]));
  } catch (e) {
    tb.replaceChildren();
    err.textContent = t("failed") + e.message;
  }
}

/// A definition list of label → value.
function facts(pairs) {
  const dl = el("dl", { class: "facts" });
  for (const [k, v] of pairs) dl.append(el("dt", {}, t(k)), el("dd", { "data-field": k }, v));
  return dl;
}

async function showOrder(sec, id) {
  const back = el("a", { href: "#/orders", class: "back" }, t("o_back"));
  const err = el("p", { id: "order-error", class: "error", role: "alert" });
  sec.replaceChildren(back, el("p", { class: "muted" }, t("loading")), err);
  let v;
  try {
    v = await apiJson("/admin/orders/" + encodeURIComponent(id));
  } catch (e) {
    sec.replaceChildren(back, err);
    err.textContent = t("failed") + e.message;
    return;
  }
  const o = v.order;
  const head = el("h2", {}, t("o_id") + " " + o.id);
  const info = facts([
    ["o_status", el("span", { id: "order-status", class: "status-" + o.status, "data-status": o.status }, statusName(o.status))],
    ["o_user", el("span", {}, String(o.uid))],
    ["o_product", o.product_name + (o.plan ? ` (${t("o_plan")} ${o.plan.name})` : "")],
    ["o_amount", el("span", { id: "order-amount" }, yuan(o.amount_fen))],
    ["o_credits", String(o.credits)],
    ["o_channel", channelName(o.channel) + " / " + methodOf(o)],
    ["o_created", when(o.created_at_ms)],
    ["o_paid", when(o.credited_at_ms)],
    ["o_refunded", when(o.refunded_at_ms)],
    ["o_trade", o.provider_trade_no || "—"],
  ]);
  const refundBox = el("div", { id: "refund-box" });
  if (o.status === "credited") {
    refundBox.append(el("button", { id: "refund", type: "button", class: "danger",
      onclick: () => confirmRefund(sec, refundBox, o) }, t("o_refund")));
  }
  const events = el("table", { id: "order-events", class: "left" });
  sec.replaceChildren(back, head, info, refundBox, el("h2", {}, t("o_events")), el("div", { class: "scroll" }, events), err);
  table(events, [t("o_time"), t("o_event"), t("o_detail")],
    (v.events || []).map((e) => [when(e.at_ms), e.kind, el("span", { class: "wrap" }, e.detail ?? "")]));
}

// The confirmation: names the amount and the credits; the reason is required (it goes to the
// ledger and the provider).
function confirmRefund(sec, box, o) {
  const reason = el("input", { id: "refund-reason", type: "text", maxlength: "200", placeholder: t("reason") });
  const msg = el("p", { id: "refund-message", class: "error", role: "alert" });
  const go = el("button", { id: "refund-confirm", type: "button", class: "danger" }, t("confirm"));
  const cancel = el("button", { id: "refund-cancel", type: "button" }, t("cancel"));
  box.replaceChildren(el("div", { class: "confirm", role: "dialog" },
    el("p", { id: "refund-question" }, fill(t(o.plan ? "o_refund_plan" : "o_refund_confirm"),
      { amount: yuan(o.amount_fen), id: o.id, uid: o.uid, credits: o.credits, plan: o.plan?.name, days: o.plan?.days })),
    field("reason", reason), el("div", { class: "actions" }, go, cancel), msg));
  reason.focus();
  cancel.onclick = () => showOrder(sec, o.id);
  go.onclick = async () => {
    if (!reason.value.trim()) {
      msg.textContent = t("o_reason_needed");
      return;
    }
    go.disabled = true;
    try {
      await apiJson(`/admin/orders/${encodeURIComponent(o.id)}/refund`, { method: "POST", json: { reason: reason.value.trim() } });
      await showOrder(sec, o.id);
    } catch (e) {
      go.disabled = false;
      msg.textContent = t("failed") + e.message;
    }
  };
}

page({
  name: "orders",
  label: "nav_orders",
  show(sec, arg) {
    if (arg) showOrder(sec, arg);
    else showList(sec);
  },
});
})();
