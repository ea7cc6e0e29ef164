// The console's redemption codes (`/admin/codes`, what `chatrelay admin codes` does): make a
// batch (credits or a plan per code, count, expiry, note) and download its codes as CSV at
// once (they are shown only in that answer: the server keeps only their hashes), list the
// batches with their usage, a batch's codes (`#/codes/<batch>`, ids and states, as CSV too),
// revoke a batch's unused codes behind a confirmation.
"use strict";
(() => {
texts({
  zh: {
    nav_codes: "兑换码", k_new: "生成一批兑换码", k_kind: "每个码兑换", k_credits: "积分", k_plan: "会员方案 ID",
    k_count: "数量", k_note: "备注", k_expires: "过期日期（可空）", k_create: "生成",
    k_created: "已生成第 {id} 批：{count} 个码。码只显示这一次，请立即下载保存。",
    k_download: "下载兑换码 CSV", k_batches: "批次", k_batch: "批次", k_grant: "内容", k_unused: "未使用",
    k_used: "已使用", k_revoked: "已作废", k_expired: "已过期", k_time: "创建时间", k_expiry: "过期",
    k_revoke: "作废", k_revoke_confirm: "作废第 {id} 批中 {unused} 个未使用的码？已使用的码不受影响。",
    k_revoked_n: "已作废 {n} 个码", k_codes: "码", k_id: "编号", k_state: "状态", k_uid: "用户",
    k_used_at: "使用时间", k_csv: "导出本批 CSV", k_back: "← 返回批次列表", k_never: "永不",
    k_plan_of: "会员 {plan}（{days} 天）", k_credits_of: "{n} 积分", k_open: "查看", k_show: "显示兑换码",
  },
  en: {
    nav_codes: "Codes", k_new: "Make a batch of codes", k_kind: "Each code grants", k_credits: "Credits",
    k_plan: "Plan id", k_count: "Count", k_note: "Note", k_expires: "Expires (optional)", k_create: "Create",
    k_created: "Batch {id} made: {count} codes. They are shown only now: download them at once.",
    k_download: "Download the codes (CSV)", k_batches: "Batches", k_batch: "Batch", k_grant: "Grants",
    k_unused: "Unused", k_used: "Used", k_revoked: "Revoked", k_expired: "Expired", k_time: "Created",
    k_expiry: "Expires", k_revoke: "Revoke",
    k_revoke_confirm: "Revoke the {unused} unused codes of batch {id}? Used codes stay used.",
    k_revoked_n: "{n} codes revoked", k_codes: "Codes", k_id: "Id", k_state: "State", k_uid: "User",
    k_used_at: "Used", k_csv: "Export this batch (CSV)", k_back: "← Back to batches", k_never: "never",
    k_plan_of: "plan {plan} ({days} days)", k_credits_of: "{n} credits", k_open: "Open", k_show: "Show the codes",
  },
});

const fill = (text, values) => text.replace(/\{(\w+)\}/g, (_, k) => String(values[k] ?? ""));
const grantWords = (b) => (b.plan ? fill(t("k_plan_of"), { plan: b.plan, days: b.plan_days ?? "" })
  : fill(t("k_credits_of"), { n: b.credits }));
// `credits` in the CSVs as the CLI writes them: a number, or `plan:<id>`.
const grantText = (b) => (b.plan ? "plan:" + b.plan : String(b.credits ?? ""));
const state = (s) => t("k_" + s);

// One CSV line (RFC 4180), formula-looking cells defused like the server's order export.
function csvLine(cells) {
  return cells.map((c) => {
    let v = String(c ?? "");
    if (/^[=+\-@]/.test(v) && isNaN(Number(v))) v = "'" + v;
    return /[",\r\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
  }).join(",") + "\r\n";
}

// A download link for text made here (the codes never come back from the server).
function csvLink(id, name, header, rows, label) {
  const body = "\ufeff" + csvLine(header) + rows.map(csvLine).join("");
  const href = URL.createObjectURL(new Blob([body], { type: "text/csv;charset=utf-8" }));
  return el("a", { id, class: "button primary", href, download: name }, label);
}

function field(label, input) {
  return el("label", { class: "field" }, el("span", {}, t(label)), input);
}

function newBatchForm(sec) {
  const kind = el("select", { id: "kc-kind", name: "kind" },
    el("option", { value: "credits" }, t("k_credits")), el("option", { value: "plan" }, t("k_plan")));
  const credits = el("input", { id: "kc-credits", name: "credits", type: "number", min: "1", value: "100" });
  const plan = el("input", { id: "kc-plan", name: "plan", type: "text", hidden: true });
  const creditsField = field("k_credits", credits), planField = field("k_plan", plan);
  planField.hidden = true;
  kind.onchange = () => {
    creditsField.hidden = kind.value !== "credits";
    planField.hidden = kind.value !== "plan";
    plan.hidden = planField.hidden;
  };
  const count = el("input", { id: "kc-count", name: "count", type: "number", min: "1", max: "10000", value: "10", required: true });
  const expires = el("input", { id: "kc-expires", name: "expires", type: "date" });
  const note = el("input", { id: "kc-note", name: "note", type: "text", maxlength: "200" });
  const out = el("div", { id: "codes-new-result" });
  const err = el("p", { id: "codes-new-error", class: "error", role: "alert" });
  const form = el("form", { id: "codes-new", class: "filters" },
    field("k_kind", kind), creditsField, planField, field("k_count", count), field("k_expires", expires),
    field("k_note", note), el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, t("k_create"))));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const body = { count: Number(count.value), note: note.value.trim() };
    if (kind.value === "plan") body.plan = plan.value.trim();
    else body.credits = Number(credits.value);
    if (expires.value) body.expires_at = expires.value;
    try {
      const v = await apiJson("/admin/codes", { method: "POST", json: body });
      const b = v.batch;
      out.replaceChildren(el("div", { class: "notice" },
        el("p", {}, fill(t("k_created"), { id: b.id, count: v.codes.length })),
        csvLink("codes-download", `codes-batch-${b.id}.csv`, ["code", "credits", "expires_at", "batch"],
          v.codes.map((c) => [c.code, grantText(b), b.expires_at ?? "", b.id]), t("k_download")),
        el("details", {}, el("summary", {}, t("k_show")), el("pre", { id: "codes-new-list", class: "config" }, v.codes.map((c) => c.code).join("\n")))));
      loadBatches();
    } catch (e) {
      err.textContent = t("failed") + e.message;
    }
  });
  return [el("h2", {}, t("k_new")), form, err, out];
}

async function loadBatches() {
  const tb = $("codes-batches");
  const err = $("codes-error");
  if (!tb) return;
  try {
    const batches = await apiJson("/admin/codes");
    table(tb, [t("k_batch"), t("k_time"), t("k_grant"), t("k_count"), t("k_unused"), t("k_used"),
      t("k_revoked"), t("k_expired"), t("k_expiry"), t("k_note"), ""],
    batches.map((b) => {
      const c = b.codes || {};
      const actions = el("span", { class: "row-actions" },
        el("a", { href: "#/codes/" + b.id, class: "button" }, t("k_open")));
      if (c.unused > 0) {
        actions.append(el("button", { type: "button", class: "danger", "data-revoke": b.id,
          onclick: () => confirmRevoke(b) }, t("k_revoke")));
      }
      return [b.id, when(b.created_at_ms), grantWords(b), b.count, c.unused ?? 0, c.used ?? 0,
        c.revoked ?? 0, c.expired ?? 0, b.expires_at_ms ? when(b.expires_at_ms) : t("k_never"), b.note || "", actions];
    }));
    tb.querySelectorAll("tr").forEach((r, i) => { if (i > 0 && batches[i - 1]) r.dataset.batch = batches[i - 1].id; });
  } catch (e) {
    err.textContent = t("failed") + e.message;
  }
}

function confirmRevoke(b) {
  const box = $("codes-confirm");
  const go = el("button", { id: "revoke-confirm", type: "button", class: "danger" }, t("confirm"));
  const msg = el("p", { class: "error", role: "alert" });
  box.replaceChildren(el("div", { class: "confirm", role: "dialog" },
    el("p", { id: "revoke-question" }, fill(t("k_revoke_confirm"), { id: b.id, unused: b.codes?.unused ?? 0 })),
    el("div", { class: "actions" }, go, el("button", { type: "button", onclick: () => box.replaceChildren() }, t("cancel"))), msg));
  box.scrollIntoView({ block: "nearest" });
  go.onclick = async () => {
    go.disabled = true;
    try {
      const r = await apiJson(`/admin/codes/${b.id}/revoke`, { method: "POST" });
      box.replaceChildren(el("p", { id: "revoke-done", class: "notice" }, fill(t("k_revoked_n"), { n: r.revoked })));
      loadBatches();
    } catch (e) {
      go.disabled = false;
      msg.textContent = t("failed") + e.message;
    }
  };
}

function showList(sec) {
  sec.replaceChildren(...newBatchForm(sec), el("h2", {}, t("k_batches")), el("div", { id: "codes-confirm" }),
    el("div", { class: "scroll" }, el("table", { id: "codes-batches" })),
    el("p", { id: "codes-error", class: "error", role: "alert" }));
  loadBatches();
}

async function showBatch(sec, id) {
  const back = el("a", { href: "#/codes", class: "back" }, t("k_back"));
  const err = el("p", { id: "batch-error", class: "error", role: "alert" });
  sec.replaceChildren(back, el("p", { class: "muted" }, t("loading")));
  let v;
  try {
    v = await apiJson("/admin/codes?batch=" + encodeURIComponent(id));
  } catch (e) {
    sec.replaceChildren(back, err);
    err.textContent = t("failed") + e.message;
    return;
  }
  const b = v.batch, c = b.codes || {};
  const tb = el("table", { id: "batch-codes" });
  sec.replaceChildren(back, el("h2", {}, `${t("k_batch")} ${b.id}: ${grantWords(b)}`),
    el("p", { id: "batch-tally", class: "muted" },
      `${t("k_unused")} ${c.unused ?? 0} · ${t("k_used")} ${c.used ?? 0} · ${t("k_revoked")} ${c.revoked ?? 0} · ${t("k_expired")} ${c.expired ?? 0}`),
    el("div", { class: "actions" }, csvLink("batch-csv", `codes-batch-${b.id}-status.csv`,
      ["id", "batch", "status", "uid", "used_at", "credits", "expires_at"],
      v.codes.map((k) => [k.id, b.id, k.status, k.uid ?? "", k.used_at ?? "", grantText(b), b.expires_at ?? ""]), t("k_csv"))),
    el("div", { class: "scroll" }, tb), err);
  table(tb, [t("k_id"), t("k_state"), t("k_uid"), t("k_used_at")],
    v.codes.map((k) => [k.id, state(k.status), k.uid ?? "", when(k.used_at_ms)]));
}

page({
  name: "codes",
  label: "nav_codes",
  show(sec, arg) {
    if (arg) showBatch(sec, arg);
    else showList(sec);
  },
});
})();
