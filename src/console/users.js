// The console's users: `#/users` searches (`GET /admin/users?q=`: uid, name, platform
// identity, a token or its hash prefix) or lists every user page by page; `#/users/<uid>` is
// one user: balances (free, paid, plan), actions (grant / take back credits, ban / unban, each
// with a required reason), identities (link / unlink), groups, tokens (create, shown once;
// revoke), recent conversations, the ledger and the usage log, both paged newest first. The list
// page also creates users.
"use strict";
(() => {
texts({
  zh: {
    nav_users: "用户",
    users_q: "UID、昵称、平台身份、令牌或令牌哈希前缀", users_total: "共 {n} 个用户",
    uid: "UID", name: "昵称", identities: "平台身份", available: "可用积分", paid: "付费积分",
    state: "状态", banned: "已封禁", normal: "正常", matched: "匹配", last_active: "最近活跃",
    created: "注册时间", back: "← 返回用户列表",
    free_left: "今日免费剩余", held: "冻结中", plan: "会员", plan_none: "无",
    plan_until: "{name}，每日 {daily}，至 {date}（剩 {days} 天）", plan_expired: "{name}（已过期）",
    grant: "发放积分", revoke_credits: "扣回积分", credits: "积分", ban: "封禁", unban: "解封",
    ban_reason: "封禁原因", ban_title: "封禁 / 解封",
    confirm_revoke_credits: "确认从用户 {uid} 扣回 {n} 积分？", confirm_ban: "确认封禁用户 {uid}？",
    confirm_unlink: "确认解绑 {key}？", confirm_token: "确认吊销令牌 {hash}？该令牌将立即失效。",
    done: "已完成", link: "绑定", unlink: "解绑", key_placeholder: "例如 mp:main:o6_bm… 或 tg:main:12345",
    groups: "分组", group_add: "加入分组", remove: "移除",
    tokens: "令牌", hash: "哈希前缀", label: "标签", expires: "到期", revoked: "已吊销",
    live: "有效", expired: "已过期", revoke_token: "吊销",
    ledger: "积分流水", seq: "序号", time: "时间", kind: "类型", free_delta: "免费", paid_delta: "付费",
    paid_after: "付费余额", reference: "引用",
    usage: "用量明细", platform: "平台", model: "模型", tokens_in: "输入", tokens_out: "输出",
    total: "积分", outcome: "结果",
    newest: "最新", older: "更早",
    k_usage: "消费", k_grant: "发放", k_purchase: "购买", k_refund: "退款", k_adjust: "扣回",
    new_user: "新建用户", create: "创建", new_token: "新建令牌", expires_days: "有效天数",
    token_once: "新令牌（只显示这一次，请立即复制给用户）：", copy: "复制", copied: "已复制",
    conversations: "最近对话", turns: "共 {n} 轮", role_user: "用户", role_assistant: "助手",
  },
  en: {
    nav_users: "Users",
    users_q: "uid, name, platform identity, token or token hash prefix", users_total: "{n} users",
    uid: "uid", name: "Name", identities: "Identities", available: "Available", paid: "Paid",
    state: "State", banned: "Banned", normal: "Active", matched: "Matched", last_active: "Last active",
    created: "Created", back: "← Back to users",
    free_left: "Free left today", held: "Held", plan: "Plan", plan_none: "none",
    plan_until: "{name}, {daily} a day, until {date} ({days} days left)", plan_expired: "{name} (expired)",
    grant: "Grant credits", revoke_credits: "Take back credits", credits: "Credits", ban: "Ban",
    unban: "Unban", ban_reason: "Ban reason", ban_title: "Ban / unban",
    confirm_revoke_credits: "Take {n} credits back from user {uid}?", confirm_ban: "Ban user {uid}?",
    confirm_unlink: "Unlink {key}?", confirm_token: "Revoke token {hash}? It stops working at once.",
    done: "Done", link: "Link", unlink: "Unlink", key_placeholder: "e.g. mp:main:o6_bm… or tg:main:12345",
    groups: "Groups", group_add: "Add to group", remove: "Remove",
    tokens: "Tokens", hash: "Hash prefix", label: "Label", expires: "Expires", revoked: "revoked",
    live: "live", expired: "expired", revoke_token: "Revoke",
    ledger: "Ledger", seq: "Seq", time: "Time", kind: "Kind", free_delta: "Free", paid_delta: "Paid",
    paid_after: "Paid after", reference: "Reference",
    usage: "Usage", platform: "Platform", model: "Model", tokens_in: "Prompt", tokens_out: "Completion",
    total: "Credits", outcome: "Outcome",
    newest: "Newest", older: "Older",
    k_usage: "usage", k_grant: "grant", k_purchase: "purchase", k_refund: "refund", k_adjust: "take-back",
    new_user: "New user", create: "Create", new_token: "New token", expires_days: "Days valid",
    token_once: "The new token (shown this once: copy it to the user now):", copy: "Copy", copied: "Copied",
    conversations: "Recent conversations", turns: "{n} turns", role_user: "user", role_assistant: "assistant",
  },
});

const PAGE = 20;
// `{name}` placeholders of a text filled from `vars`.
const fill = (key, vars) => t(key).replace(/\{(\w+)\}/g, (_, k) => String(vars[k] ?? ""));

// The list / search state survives a visit to a user and back.
let query = "";
let offset = 0;

page({ name: "users", label: "nav_users", show });

function show(sec, arg) {
  if (arg && /^\d+$/.test(arg)) showUser(sec, arg);
  else showList(sec);
}

// --- the list and the search ---

function showList(sec) {
  const input = el("input", { id: "users-q", type: "search", value: query, placeholder: t("users_q"), "aria-label": t("search") });
  const form = el("form", { id: "users-search", class: "row" }, input, el("button", { type: "submit" }, t("search")));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    query = input.value.trim();
    offset = 0;
    loadList(sec);
  });
  const name = el("input", { id: "new-user-name", name: "name", required: true, maxlength: 64, placeholder: t("name"), "aria-label": t("name") });
  const createError = el("p", { class: "error", role: "alert", id: "new-user-error" });
  const create = el("form", { id: "new-user", class: "box" }, el("h3", {}, t("new_user")),
    el("div", { class: "row" }, name, el("button", { type: "submit" }, t("create"))), createError);
  create.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    createError.textContent = "";
    try {
      const user = await apiJson("/admin/users", { method: "POST", json: { name: name.value.trim() } });
      go("#/users/" + user.uid);
    } catch (e) {
      createError.textContent = t("failed") + e.message;
    }
  });
  sec.replaceChildren(form, el("p", { id: "users-info", class: "muted" }),
    el("div", { class: "scroll" }, el("table", { id: "users-table" })),
    el("div", { class: "pager", id: "users-pager" }), el("p", { id: "users-error", class: "error", role: "alert" }),
    create);
  loadList(sec);
}

async function loadList(sec) {
  $("users-error").textContent = "";
  const path = query
    ? "/admin/users?limit=100&q=" + encodeURIComponent(query)
    : `/admin/users?limit=${PAGE}&offset=${offset}`;
  let body;
  try {
    body = await apiJson(path);
  } catch (e) {
    $("users-error").textContent = t("failed") + e.message;
    return;
  }
  const rows = query ? body : body.users;
  const userLink = (u) => el("a", { href: "#/users/" + u.uid, class: "uid" }, String(u.uid));
  table("users-table",
    [t("uid"), t("name"), t("state"), t("available"), t("paid"), t("identities"), query ? t("matched") : t("last_active")],
    rows.map((u) => [userLink(u), u.name, stateOf(u), u.available, u.paid, (u.identities || []).join(" "),
      query ? u.matched : when(u.last_active_ms)]));
  $("users-info").textContent = query ? "" : fill("users_total", { n: body.total });
  const pager = $("users-pager");
  pager.replaceChildren();
  if (!query) {
    const prev = el("button", { type: "button", disabled: offset === 0 }, t("prev"));
    const next = el("button", { type: "button", disabled: offset + PAGE >= body.total }, t("next"));
    prev.addEventListener("click", () => { offset = Math.max(0, offset - PAGE); loadList(sec); });
    next.addEventListener("click", () => { offset += PAGE; loadList(sec); });
    pager.append(prev, next);
  }
}

function stateOf(u) {
  return u.banned
    ? el("span", { class: "bad", title: u.ban_reason || "" }, t("banned"))
    : el("span", { class: "good" }, t("normal"));
}

// --- one user ---

let current = null; // the uid shown
// A token just made, shown once on its user's page (the server keeps only its hash).
let fresh = null; // { uid, token }

async function showUser(sec, uid) {
  current = uid;
  sec.replaceChildren(el("p", {}, el("a", { href: "#/users", id: "users-back" }, t("back"))),
    el("p", { class: "muted" }, t("loading")));
  let u;
  try {
    u = await apiJson("/admin/users/" + uid + "?ledger=1");
  } catch (e) {
    sec.replaceChildren(el("p", {}, el("a", { href: "#/users" }, t("back"))),
      el("p", { class: "error", role: "alert" }, t("failed") + e.message));
    return;
  }
  if (current !== uid) return;
  const user = u.user;
  const head = el("h2", { id: "user-title" }, `${user.name} · ${t("uid")} ${user.uid} `, stateOf(user));
  const meta = el("p", { class: "muted" }, `${t("created")}: ${when(user.created_at_ms)}` +
    (user.banned && user.ban_reason ? ` · ${t("ban_reason")}: ${user.ban_reason}` : ""));
  sec.replaceChildren(el("p", {}, el("a", { href: "#/users", id: "users-back" }, t("back"))), head, meta,
    balances(u), actions(user), identities(u), groups(user), tokens(u), conversations(u),
    el("h2", {}, t("ledger")), el("div", { class: "scroll" }, el("table", { id: "ledger-table" })),
    el("div", { class: "pager", id: "ledger-pager" }),
    el("h2", {}, t("usage")), el("div", { class: "scroll" }, el("table", { id: "usage-table" })),
    el("div", { class: "pager", id: "usage-pager" }));
  pagedTable({
    id: "ledger", path: `/admin/users/${uid}/ledger?limit=${PAGE}`, items: (b) => b.entries, next: (b) => b.next,
    head: [t("seq"), t("time"), t("kind"), t("free_delta"), t("paid_delta"), t("paid_after"), t("reason"), t("reference")],
    row: (e) => [e.seq, when(e.at_ms), TEXT[lang]["k_" + e.kind] ? t("k_" + e.kind) : e.kind, signed(e.free_delta), signed(e.paid_delta), e.paid_after, e.reason, e.reference],
  });
  pagedTable({
    id: "usage", path: `/admin/users/${uid}/usage?limit=${PAGE}`, items: (b) => b.data, next: (b) => b.next_before,
    head: [t("time"), t("platform"), t("model"), t("tokens_in"), t("tokens_out"), t("free_delta"), t("paid_delta"), t("plan"), t("total"), t("outcome")],
    row: (r) => [when(r.at_ms), r.platform, r.model, r.prompt_tokens, r.completion_tokens, r.credits.free, r.credits.paid,
      r.credits.plan, r.credits.total, r.outcome],
  });
}

const signed = (n) => (n > 0 ? "+" : "") + n;

function balances(u) {
  const b = u.balance, p = u.plan;
  let plan = t("plan_none");
  if (p) plan = p.active
    ? fill("plan_until", { name: p.name, daily: p.daily_credits, date: p.last_date, days: p.days_left })
    : fill("plan_expired", { name: p.name });
  const card = (key, value) => el("div", { class: "card", "data-key": key },
    el("div", { class: "label" }, t(key)), el("div", { class: "value" }, String(value)));
  return el("div", { class: "cards", id: "user-balances" },
    card("available", b.available), card("free_left", b.free_left), card("paid", b.paid), card("held", b.held),
    el("div", { class: "card wide", "data-key": "plan" }, el("div", { class: "label" }, t("plan")),
      el("div", { class: "sub" }, plan)));
}

/// A form that posts to the admin API and shows the user again after it worked; `check`
/// may ask for a confirmation (false: not sent). Errors (a refused reason...) stay shown.
function form(id, title, fields, submitText, send, check, inline = false) {
  const error = el("p", { class: "error", role: "alert", id: id + "-error" });
  const button = el("button", { type: "submit" }, submitText);
  const f = inline
    ? el("form", { id, class: "box" }, el("div", { class: "row" }, ...fields, button), error)
    : el("form", { id, class: "box" }, el("h3", {}, title), ...fields, button, error);
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    const values = Object.fromEntries(new FormData(f).entries());
    if (check && !check(values, ev.submitter)) return;
    try {
      await send(values, ev.submitter);
      showUser($("users"), current);
    } catch (e) {
      error.textContent = t("failed") + e.message;
    }
  });
  return f;
}

const reasonField = (id) => el("input", { name: "reason", id, required: true, maxlength: 500, placeholder: t("reason"), "aria-label": t("reason") });
const creditsField = (id) => el("input", { name: "credits", id, type: "number", min: 1, step: 1, required: true, placeholder: t("credits"), "aria-label": t("credits") });

function actions(user) {
  const uid = user.uid;
  const post = (path, json) => apiJson(`/admin/users/${uid}/${path}`, { method: "POST", json });
  const grant = form("grant-form", t("grant"), [creditsField("grant-credits"), reasonField("grant-reason")], t("grant"),
    (v) => post("grant", { credits: Number(v.credits), reason: v.reason }));
  const revoke = form("revoke-form", t("revoke_credits"), [creditsField("revoke-credits"), reasonField("revoke-reason")],
    t("revoke_credits"), (v) => post("revoke", { credits: Number(v.credits), reason: v.reason }),
    (v) => confirm(fill("confirm_revoke_credits", { n: v.credits, uid })));
  const ban = form("ban-form", t("ban_title"), [reasonField("ban-reason")], user.banned ? t("unban") : t("ban"),
    (v) => post("ban", { banned: !user.banned, reason: v.reason }),
    () => user.banned || confirm(fill("confirm_ban", { uid })));
  return el("div", { class: "boxes" }, grant, revoke, ban);
}

function identities(u) {
  const uid = u.user.uid;
  const tb = el("table", { id: "identities-table" });
  table(tb, [t("identities"), ""], (u.identities || []).map((key) => {
    const b = el("button", { type: "button", class: "danger" }, t("unlink"));
    b.addEventListener("click", () => act(() => confirm(fill("confirm_unlink", { key })),
      () => apiJson(`/admin/users/${uid}/identities/${encodeURIComponent(key)}`, { method: "DELETE" })));
    return [key, b];
  }));
  const link = form("link-form", t("link"), [el("input", { name: "key", required: true, placeholder: t("key_placeholder"), "aria-label": t("identities") })],
    t("link"), (v) => apiJson(`/admin/users/${uid}/identities`, { method: "POST", json: { key: v.key.trim() } }),
    null, true);
  return el("div", {}, el("h2", {}, t("identities")), el("div", { class: "scroll" }, tb), link);
}

function groups(user) {
  const uid = user.uid;
  const names = user.groups || []; // absent when none
  const list = el("div", { class: "chips", id: "user-groups" }, ...(names.length ? [] : [t("none")]));
  for (const g of names) {
    const b = el("button", { type: "button", title: t("remove") }, "×");
    b.addEventListener("click", () => act(() => true,
      () => apiJson(`/admin/users/${uid}/groups`, { method: "POST", json: { remove: [g] } })));
    list.append(el("span", { class: "chip" }, g, b));
  }
  const add = form("group-form", t("group_add"), [el("input", { name: "group", required: true, maxlength: 64, placeholder: t("groups"), "aria-label": t("groups") })],
    t("group_add"), (v) => apiJson(`/admin/users/${uid}/groups`, { method: "POST", json: { add: [v.group.trim()] } }),
    null, true);
  return el("div", {}, el("h2", {}, t("groups")), list, add);
}

function tokens(u) {
  const uid = u.user.uid;
  const now = Date.now();
  const tb = el("table", { id: "tokens-table" });
  table(tb, [t("hash"), t("label"), t("created"), t("expires"), t("state"), ""], (u.tokens || []).map((k) => {
    const expired = k.expires_at_ms && k.expires_at_ms <= now;
    const state = k.revoked ? t("revoked") : expired ? t("expired") : t("live");
    let button = "";
    if (!k.revoked && !expired) {
      button = el("button", { type: "button", class: "danger", "data-hash": k.hash_prefix }, t("revoke_token"));
      button.addEventListener("click", () => act(() => confirm(fill("confirm_token", { hash: k.hash_prefix })),
        () => apiJson("/admin/tokens/revoke", { method: "POST", json: { uid, hash_prefix: k.hash_prefix } })));
    }
    return [el("code", {}, k.hash_prefix), k.label, when(k.created_at_ms), when(k.expires_at_ms), state, button];
  }));
  const days = el("input", { name: "days", type: "number", min: 1, max: 3650, step: 1, placeholder: t("expires_days"), "aria-label": t("expires_days") });
  const create = form("token-form", t("new_token"), [el("input", { name: "label", maxlength: 64, placeholder: t("label"), "aria-label": t("label") }), days],
    t("new_token"), async (v) => {
      const json = { label: v.label.trim() };
      if (v.days) json.expires_in_days = Number(v.days);
      const made = await apiJson(`/admin/users/${uid}/tokens`, { method: "POST", json });
      fresh = { uid: String(uid), token: made.token };
    }, null, true);
  let shown = "";
  if (fresh && fresh.uid === String(uid)) {
    const value = el("code", { id: "new-token" }, fresh.token);
    const copy = el("button", { type: "button" }, t("copy"));
    copy.addEventListener("click", async () => {
      try { await navigator.clipboard.writeText(value.textContent); copy.textContent = t("copied"); } catch (_) { /* select it by hand */ }
    });
    shown = el("div", { class: "notice" }, el("p", {}, t("token_once")), el("p", { class: "wrap" }, value, " ", copy));
    fresh = null;
  }
  return el("div", {}, el("h2", {}, t("tokens")), shown, el("div", { class: "scroll" }, tb), create,
    el("p", { class: "error", role: "alert", id: "user-error" }));
}

/// The newest turns of each of the user's platform conversations (as `admin user show`).
function conversations(u) {
  const list = u.conversations || [];
  const boxes = list.map((c) => el("div", { class: "box conversation" },
    el("h3", {}, c.key + " · " + fill("turns", { n: c.turns })),
    ...c.recent.map((turn) => el("p", { class: "wrap" },
      el("b", {}, (turn.role === "user" ? t("role_user") : turn.role === "assistant" ? t("role_assistant") : turn.role) + "："),
      turn.content))));
  return el("div", { id: "user-conversations" }, el("h2", {}, t("conversations")),
    ...(boxes.length ? boxes : [el("p", { class: "muted" }, t("none"))]));
}

/// A button's action: asks `ok()`, runs `call`, shows the user again, or the error.
async function act(ok, call) {
  if (!ok()) return;
  try {
    await call();
    showUser($("users"), current);
  } catch (e) {
    const err = $("user-error");
    if (err) err.textContent = t("failed") + e.message;
  }
}

/// A table paged newest first by the API's cursor: "newest" and "older" buttons.
function pagedTable({ id, path, items, next, head, row }) {
  const load = async (before) => {
    const pager = $(id + "-pager");
    let body;
    try {
      body = await apiJson(path + (before ? "&before=" + encodeURIComponent(before) : ""));
    } catch (e) {
      pager.replaceChildren(el("p", { class: "error", role: "alert" }, t("failed") + e.message));
      return;
    }
    table(id + "-table", head, items(body).map(row));
    const newest = el("button", { type: "button", disabled: !before }, t("newest"));
    const older = el("button", { type: "button", disabled: !next(body), id: id + "-older" }, t("older"));
    newest.addEventListener("click", () => load(null));
    older.addEventListener("click", () => load(next(body)));
    pager.replaceChildren(newest, older);
  };
  load(null);
}
})();
