// The operators' console: logs in with the admin token (for a session cookie), then reads
// everything from the admin API (/admin/...) like the CLI does. Changes carry X-CSRF-Token.
//
// This file is the frame: texts, the API call, login / logout, the navigation and the router.
// Each page is its own script (dashboard.js, ...), loaded after this one by console.html, that
// registers itself with `page({...})` and adds its texts with `texts({zh, en})`. A page file
// wraps its code in `(() => { ... })();` so that its names stay its own.
//
// Routes are hashes: `#/<page>` or `#/<page>/<argument>` (e.g. `#/users/42`); `go(hash)`
// navigates, and the page's `show(section, argument)` fills its <section id="<page>">.
"use strict";

const TEXT = {
  zh: {
    title: "chatrelay 控制台", logout: "退出登录", token: "管理员令牌", login: "登录",
    wrong: "令牌错误", throttled: "失败次数过多，请 10 分钟后再试", failed: "请求失败：",
    none: "无", lang: "English", loading: "加载中…", confirm: "确认", cancel: "取消",
    reason: "原因", save: "保存", search: "搜索", prev: "上一页", next: "下一页",
  },
  en: {
    title: "chatrelay console", logout: "Log out", token: "Admin token", login: "Log in",
    wrong: "Wrong token", throttled: "Too many failed logins; try again in 10 minutes",
    failed: "Request failed: ", none: "none", lang: "中文", loading: "Loading…",
    confirm: "Confirm", cancel: "Cancel", reason: "Reason", save: "Save", search: "Search",
    prev: "Previous", next: "Next",
  },
};

/// The registered pages, in the navigation's order: { name, label, show(section, arg) }.
const PAGES = [];

let lang = localStorage.getItem("console.lang") === "en" ? "en" : "zh";
let csrf = null;
let loggedIn = false;

const $ = (id) => document.getElementById(id);
const t = (key) => TEXT[lang][key] ?? TEXT.zh[key] ?? key;
const yuan = (fen) => (fen < 0 ? "-" : "") + (Math.floor(Math.abs(fen) / 100)) + "." + String(Math.abs(fen) % 100).padStart(2, "0");
// A time in milliseconds since the epoch, as local "YYYY-MM-DD HH:MM:SS".
const when = (ms) => {
  if (!ms) return "—";
  const d = new Date(ms), p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
};

/// Adds a page's texts (both languages).
function texts({ zh, en }) {
  Object.assign(TEXT.zh, zh);
  Object.assign(TEXT.en, en);
}

/// Registers a page: `name` (its route and section id), `label` (a text key for the
/// navigation), `show(section, arg)` (fills the section; called on every visit and on a
/// language switch).
function page(p) {
  PAGES.push(p);
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== undefined && c !== null) e.append(c);
  return e;
}

/// A table: `head` the column titles, `rows` arrays of cells (strings, numbers or nodes).
/// Fills `target` (a <table> or its id).
function table(target, head, rows) {
  const tb = typeof target === "string" ? $(target) : target;
  tb.replaceChildren(el("tr", {}, ...head.map((h) => el("th", {}, h))));
  for (const r of rows) {
    tb.append(el("tr", {}, ...r.map((c) => el("td", {}, c instanceof Node ? c : String(c ?? "")))));
  }
  if (!rows.length) tb.append(el("tr", {}, el("td", { colspan: head.length }, t("none"))));
  return tb;
}

/// A call to the server with the session cookie; changes carry the CSRF token. A 401 means
/// the session is gone: back to the login form.
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (options.method && options.method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = Object.assign({}, options, { body: JSON.stringify(options.json) });
    delete options.json;
  }
  const res = await fetch(path, Object.assign({}, options, { headers, credentials: "same-origin" }));
  if (res.status === 401 && !path.startsWith("/console/api/login")) {
    csrf = null;
    show(false);
  }
  return res;
}

/// `api` for JSON answers: the parsed body, or an Error whose message is the server's
/// `error` (or the status).
async function apiJson(path, options = {}) {
  const res = await api(path, options);
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  if (!res.ok) {
    const msg = body && (typeof body.error === "string" ? body.error : body.error?.message);
    const err = new Error(msg || String(res.status));
    err.status = res.status;
    err.body = body;
    throw err;
  }
  return body;
}

function applyLang() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  for (const e of document.querySelectorAll("[data-t]")) e.textContent = t(e.dataset.t);
  $("lang").textContent = t("lang");
  buildNav();
}

function buildNav() {
  const nav = $("nav");
  nav.replaceChildren(...PAGES.map((p) => el("a", { href: "#/" + p.name, "data-page": p.name }, t(p.label))));
  markNav();
}

function markNav() {
  const current = route().name;
  for (const a of $("nav").querySelectorAll("a")) a.classList.toggle("on", a.dataset.page === current);
}

/// The current hash as { name, arg } (the first page when the hash names none).
function route() {
  const [, name = "", ...rest] = location.hash.split("/");
  const known = PAGES.find((p) => p.name === name);
  return { name: known ? name : PAGES[0]?.name, arg: known ? decodeURIComponent(rest.join("/")) : "" };
}

/// Navigates to `hash` (e.g. "#/users/42"); the same hash shows the page again.
function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function section(name) {
  let s = $(name);
  if (!s) {
    s = el("section", { id: name, class: "page" });
    $("pages").append(s);
  }
  return s;
}

function render() {
  if (!loggedIn) return;
  const { name, arg } = route();
  markNav();
  for (const p of PAGES) section(p.name).hidden = p.name !== name;
  const p = PAGES.find((q) => q.name === name);
  if (p) p.show(section(p.name), arg);
}

function show(on) {
  loggedIn = on;
  $("login").hidden = on;
  $("nav").hidden = !on;
  $("logout").hidden = !on;
  if (on) render();
  else for (const p of PAGES) section(p.name).hidden = true;
}

async function start() {
  applyLang();
  const res = await api("/console/api/session");
  if (res.ok) {
    csrf = (await res.json()).csrf;
    show(true);
  } else {
    show(false);
  }
}

async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  const res = await api("/console/api/login", { method: "POST", json: { token: $("token").value } });
  if (res.ok) {
    csrf = (await res.json()).csrf;
    $("token").value = "";
    show(true);
  } else {
    $("login-error").textContent = res.status === 429 ? t("throttled") : t("wrong");
  }
}

async function logout() {
  await api("/console/api/logout", { method: "POST" });
  csrf = null;
  show(false);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("lang").addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem("console.lang", lang);
    applyLang();
    render();
  });
  window.addEventListener("hashchange", render);
  start();
});
