// The console's change log (page `changes`, `#/changes`; not /admin/audit, the ledger check):
// every change made through the admin API, by the console or the CLI (`GET /admin/changes`,
// what `chatrelay admin changes` prints), newest first: when, who, from which address, what
// (method, path, the kept fields), the outcome and the reason.
"use strict";
(() => {
texts({
  zh: {
    nav_audit: "操作记录",
    audit_intro: "通过管理接口（控制台或命令行）做出的每一次修改。",
    c_time: "时间", c_actor: "操作方", c_address: "地址", c_action: "操作", c_status: "结果",
    c_reason: "原因", c_details: "内容", actor_console: "控制台", actor_token: "令牌 / CLI",
    older: "更早", newest: "最新",
  },
  en: {
    nav_audit: "Change log",
    audit_intro: "Every change made through the admin API (the console or the CLI).",
    c_time: "Time", c_actor: "By", c_address: "Address", c_action: "Action", c_status: "Result",
    c_reason: "Reason", c_details: "Details", actor_console: "console", actor_token: "token / CLI",
    older: "Older", newest: "Newest",
  },
});

const PAGE = 50;

page({ name: "changes", label: "nav_audit", show });

function show(sec) {
  sec.replaceChildren(el("p", { class: "muted" }, t("audit_intro")),
    el("div", { class: "scroll" }, el("table", { id: "changes-table" })),
    el("div", { class: "pager", id: "changes-pager" }),
    el("p", { class: "error", role: "alert", id: "changes-error" }));
  load(null);
}

/// The kept fields of a change as `name=value` words (lists joined by commas).
function details(summary) {
  return Object.entries(summary || {})
    .filter(([, v]) => v !== null && v !== "")
    .map(([k, v]) => k + "=" + (Array.isArray(v) ? v.join(",") : typeof v === "object" ? JSON.stringify(v) : String(v)))
    .join(" ");
}

/// Method and path; a path about one user links to the user's page.
function action(c) {
  const code = el("code", {}, c.method + " " + c.path);
  const user = /^\/admin\/users\/(\d+)(\/|$)/.exec(c.path);
  return user ? el("a", { href: "#/users/" + user[1], class: "user-link" }, code) : code;
}

async function load(before) {
  $("changes-error").textContent = "";
  let body;
  try {
    body = await apiJson(`/admin/changes?limit=${PAGE}` + (before ? "&before=" + encodeURIComponent(before) : ""));
  } catch (e) {
    $("changes-error").textContent = t("failed") + e.message;
    return;
  }
  table("changes-table",
    [t("c_time"), t("c_actor"), t("c_address"), t("c_action"), t("c_status"), t("c_reason"), t("c_details")],
    body.changes.map((c) => [
      when(c.at_ms),
      c.actor === "console" ? t("actor_console") : t("actor_token"),
      c.address,
      action(c),
      el("span", { class: c.status < 400 ? "good" : "bad" }, String(c.status)),
      el("span", { class: "wrap" }, c.reason ?? ""),
      el("span", { class: "wrap" }, details(c.summary)),
    ]));
  const newest = el("button", { type: "button", disabled: !before }, t("newest"));
  const older = el("button", { type: "button", disabled: !body.next, id: "changes-older" }, t("older"));
  newest.addEventListener("click", () => load(null));
  older.addEventListener("click", () => load(body.next));
  $("changes-pager").replaceChildren(newest, older);
}
})();
