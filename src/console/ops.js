// The console's operations page: the version and uptime, a configuration reload with its
// result (what changed, what needs a restart, or every problem of an invalid file), the
// backup download (embedded store only), the zsxq groups (pause, resume, a new access token),
// content-filter hits to review, the ledger audit, and the running configuration with its
// secrets redacted by the server (`GET /admin/config`).
"use strict";
(() => {
texts({
  zh: {
    nav_ops: "运维", p_version: "版本", p_uptime: "已运行", p_started: "启动于", p_file: "配置文件",
    p_reload: "重新加载配置", p_reload_ok: "已重新加载。", p_applied: "已生效：", p_restart: "需重启才生效：",
    p_nothing: "没有变化", p_reload_bad: "新配置无效，仍使用当前配置。", p_backup: "下载备份",
    p_backup_pg: "PostgreSQL 存储：请用 pg_dump 备份数据库（此处仅支持内置存储）。",
    p_zsxq: "知识星球", p_group: "星球", p_zstate: "状态", p_last_poll: "上次轮询", p_today: "今日回答",
    p_since: "启动以来", p_last_error: "最近错误", p_pause: "暂停", p_resume: "恢复", p_token: "新 access_token",
    p_set_token: "更换令牌", p_paused: "已暂停", p_polling: "运行中", p_expired: "令牌过期",
    p_token_done: "令牌已更换，轮询已恢复", p_no_zsxq: "未配置知识星球",
    p_hits: "内容审核命中", p_time: "时间", p_uid: "用户", p_scope: "范围", p_dir: "方向", p_rule: "规则",
    p_word: "词", p_excerpt: "摘录", p_config: "当前配置（密钥已隐藏）", p_d: "天", p_h: "小时", p_m: "分",
    p_audit: "核对账本", p_audit_run: "核对", p_audit_ok: "一致：{users} 个用户、{entries} 条流水、{open} 个冻结，付费积分合计 {paid}。",
    p_audit_bad: "发现 {n} 处不一致：",
  },
  en: {
    nav_ops: "Operations", p_version: "Version", p_uptime: "Uptime", p_started: "Started", p_file: "Config file",
    p_reload: "Reload the configuration", p_reload_ok: "Reloaded.", p_applied: "Applied: ",
    p_restart: "Needs a restart: ", p_nothing: "nothing changed",
    p_reload_bad: "The new configuration is invalid; the running one stays.", p_backup: "Download a backup",
    p_backup_pg: "PostgreSQL store: back the database up with pg_dump (this works for the embedded store only).",
    p_zsxq: "zsxq groups", p_group: "Group", p_zstate: "State", p_last_poll: "Last poll", p_today: "Answered today",
    p_since: "Since start", p_last_error: "Last error", p_pause: "Pause", p_resume: "Resume",
    p_token: "New access_token", p_set_token: "Replace token", p_paused: "paused", p_polling: "polling",
    p_expired: "TOKEN EXPIRED", p_token_done: "Token replaced; polling resumes", p_no_zsxq: "No zsxq group configured",
    p_hits: "Content-filter hits", p_time: "Time", p_uid: "User", p_scope: "Scope", p_dir: "Direction",
    p_rule: "Rule", p_word: "Word", p_excerpt: "Excerpt", p_config: "Running configuration (secrets redacted)",
    p_d: "d", p_h: "h", p_m: "min",
    p_audit: "Ledger audit", p_audit_run: "Check",
    p_audit_ok: "Consistent: {users} users, {entries} ledger entries, {open} open holds, {paid} paid credits in all.",
    p_audit_bad: "{n} inconsistencies:",
  },
});

function uptime(secs) {
  const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600), m = Math.floor((secs % 3600) / 60);
  return (d ? `${d} ${t("p_d")} ` : "") + `${h} ${t("p_h")} ${m} ${t("p_m")}`;
}

function box(id, ...children) {
  return el("div", { id, class: "panel" }, ...children);
}

async function about(target) {
  try {
    const c = await apiJson("/admin/config");
    const backup = c.backup_supported
      ? el("a", { id: "backup", class: "button", href: "/admin/backup", download: "chatrelay-backup.ndjson" }, t("p_backup"))
      : el("p", { id: "backup-pg", class: "muted" }, t("p_backup_pg"));
    target.replaceChildren(
      el("div", { class: "cards" },
        el("div", { class: "card" }, el("div", { class: "label" }, t("p_version")), el("div", { id: "version", class: "sub" }, c.version)),
        el("div", { class: "card" }, el("div", { class: "label" }, t("p_uptime")),
          el("div", { id: "uptime", class: "value", "data-secs": String(c.uptime_secs) }, uptime(c.uptime_secs)),
          el("div", { class: "sub" }, t("p_started") + " " + when(c.started_at_ms))),
        el("div", { class: "card" }, el("div", { class: "label" }, t("p_file")), el("div", { class: "sub wrap" }, c.file || "—"))),
      el("div", { class: "actions" }, backup));
    $("config-view").textContent = JSON.stringify(c.config, null, 2);
  } catch (e) {
    target.replaceChildren(el("p", { class: "error" }, t("failed") + e.message));
  }
}

async function reload() {
  const out = $("reload-result");
  $("reload").disabled = true;
  out.replaceChildren(el("p", { class: "muted" }, t("loading")));
  try {
    const res = await api("/admin/reload", { method: "POST" });
    const body = await res.json().catch(() => ({}));
    if (res.ok) {
      const applied = body.applied || [], restart = body.restart_needed || [];
      out.replaceChildren(el("div", { id: "reload-ok", class: "notice" },
        el("p", {}, t("p_reload_ok") + " " + (applied.length || restart.length ? "" : t("p_nothing"))),
        applied.length ? el("p", { id: "reload-applied" }, t("p_applied") + applied.join(", ")) : null,
        restart.length ? el("p", { id: "reload-restart" }, t("p_restart") + restart.join(", ")) : null));
      about($("ops-about"));
    } else {
      const problems = body.problems || [];
      out.replaceChildren(el("div", { id: "reload-error", class: "notice bad" },
        // Its own words when the server gave no list (not the invalid-file case).
        el("p", {}, problems.length ? t("p_reload_bad") : t("failed") + (body.error || res.status)),
        el("ul", { class: "problems" }, ...problems.map((p) => el("li", {}, p)))));
    }
  } catch (e) {
    out.replaceChildren(el("p", { class: "error" }, t("failed") + e.message));
  } finally {
    if ($("reload")) $("reload").disabled = false;
  }
}

function zsxqState(g) {
  if (g.token_expired) return el("span", { class: "state-down" }, t("p_expired"));
  return g.paused ? el("span", { class: "state-degraded" }, t("p_paused")) : el("span", { class: "state-up" }, t("p_polling"));
}

async function zsxq(target) {
  try {
    const groups = await apiJson("/admin/zsxq");
    if (!groups.length) {
      target.replaceChildren(el("p", { class: "muted" }, t("p_no_zsxq")));
      return;
    }
    // One card per group (not a table row), so that its buttons stay in reach on a phone.
    const list = el("div", { id: "zsxq-groups", class: "groups" });
    const msg = el("p", { id: "zsxq-message", role: "status", class: "muted" });
    target.replaceChildren(list, msg);
    for (const g of groups) {
      const id = encodeURIComponent(g.id);
      const toggle = el("button", { type: "button", "data-zsxq": g.id, onclick: async () => {
        try {
          await apiJson(`/admin/zsxq/${id}/${g.paused ? "resume" : "pause"}`, { method: "POST" });
          zsxq(target);
        } catch (e) { msg.textContent = t("failed") + e.message; }
      } }, g.paused ? t("p_resume") : t("p_pause"));
      const token = el("input", { type: "password", autocomplete: "off", placeholder: t("p_token"), "data-zsxq-token": g.id });
      const form = el("form", { class: "inline" }, token, el("button", { type: "submit" }, t("p_set_token")));
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        try {
          await apiJson(`/admin/zsxq/${id}/token`, { method: "POST", json: { access_token: token.value.trim() } });
          token.value = "";
          await zsxq(target);
          $("zsxq-message").textContent = t("p_token_done");
        } catch (e) { msg.textContent = t("failed") + e.message; }
      });
      list.append(el("div", { class: "group", "data-group": g.id },
        el("div", { class: "group-head" }, el("strong", {}, `${g.id} (${g.group_id})`), zsxqState(g)),
        el("div", { class: "muted" }, `${t("p_last_poll")} ${when(g.last_poll_ms)} · ${t("p_today")} ${g.answered_today} · ${t("p_since")} ${g.answered_since_start}`),
        g.last_error ? el("div", { class: "error wrap" }, t("p_last_error") + ": " + g.last_error) : null,
        el("div", { class: "actions" }, toggle, form)));
    }
  } catch (e) {
    target.replaceChildren(el("p", { class: "error" }, t("failed") + e.message));
  }
}

// `GET /admin/audit` (what `admin audit` prints): does every user's ledger add up to the
// balance, and every hold to an open reservation?
async function audit() {
  const out = $("audit-result");
  out.replaceChildren(el("p", { class: "muted" }, t("loading")));
  try {
    const r = await apiJson("/admin/audit");
    const fill = (key, vars) => t(key).replace(/\{(\w+)\}/g, (_, k) => String(vars[k] ?? ""));
    if (!r.mismatches.length) {
      out.replaceChildren(el("div", { class: "notice", id: "audit-ok" }, el("p", {}, fill("p_audit_ok",
        { users: r.users, entries: r.ledger_entries, open: r.open_reservations, paid: r.total_paid }))));
    } else {
      out.replaceChildren(el("div", { class: "notice bad", id: "audit-bad" },
        el("p", {}, fill("p_audit_bad", { n: r.mismatches.length })),
        el("ul", { class: "problems" }, ...r.mismatches.map((m) => el("li", {}, JSON.stringify(m))))));
    }
  } catch (e) {
    out.replaceChildren(el("p", { class: "error" }, t("failed") + e.message));
  }
}

async function hits(target) {
  try {
    const list = await apiJson("/admin/hits?limit=100");
    const tb = el("table", { id: "hits", class: "left" });
    target.replaceChildren(el("div", { class: "scroll" }, tb));
    table(tb, [t("p_time"), t("p_uid"), t("p_scope"), t("p_dir"), t("p_rule"), t("p_word"), t("p_excerpt")],
      list.map((h) => [when(h.at_ms), h.uid != null ? el("a", { href: "#/users/" + h.uid }, String(h.uid)) : "",
        h.scope ?? "", h.direction ?? "", h.rule ?? "", h.word ?? "", el("span", { class: "wrap" }, h.excerpt ?? "")]));
  } catch (e) {
    target.replaceChildren(el("p", { class: "error" }, t("failed") + e.message));
  }
}

page({
  name: "ops",
  label: "nav_ops",
  show(sec) {
    const aboutBox = box("ops-about"), zsxqBox = box("ops-zsxq"), hitsBox = box("ops-hits");
    const reloadBox = box("ops-reload",
      el("button", { id: "reload", type: "button", class: "primary", onclick: reload }, t("p_reload")),
      el("div", { id: "reload-result", role: "status" }));
    const auditBox = box("ops-audit",
      el("button", { id: "audit", type: "button", onclick: audit }, t("p_audit_run")),
      el("div", { id: "audit-result", role: "status" }));
    sec.replaceChildren(aboutBox, reloadBox, el("h2", {}, t("p_audit")), auditBox, el("h2", {}, t("p_zsxq")), zsxqBox, el("h2", {}, t("p_hits")), hitsBox,
      el("h2", {}, t("p_config")), el("pre", { id: "config-view", class: "config" }));
    about(aboutBox);
    zsxq(zsxqBox);
    hits(hitsBox);
  },
});
})();
