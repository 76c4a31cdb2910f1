// botengine dashboard: no build step, no dependencies. Every value from the API is put
// into the page as text (never as HTML): bot names and errors are operator input.
"use strict";

const API = "/api/v1";
const POLL_MS = 2000;
const TOKEN_KEY = "botengine.token";
const $ = (sel) => document.querySelector(sel);
const state = { sort: "name", order: "asc", offset: 0, total: 0, timer: null, bot: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Authorization: `Bearer ${token}`, ...(options.headers || {}) };
  const response = await fetch(API + path, { ...options, headers });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  return body;
}

// -- formatting ----------------------------------------------------------------------

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} d ago`;
}
const num = (v, digits = 2) =>
  v === null || v === undefined ? "–" : Number(v).toLocaleString(undefined, { maximumFractionDigits: digits });
const signed = (v) => el("span", { class: v > 0 ? "pos" : v < 0 ? "neg" : "" }, num(v));
const tile = (k, v, id) => el("div", { class: "tile", ...(id ? { id } : {}) }, el("div", { class: "k" }, k), el("div", { class: "v" }, v));

// -- views ---------------------------------------------------------------------------

function show(view) {
  for (const id of ["login", "fleet", "bot"]) $("#" + id).hidden = id !== view;
  $("#logout").hidden = view === "login";
}

function route() {
  clearTimeout(state.timer);
  if (!sessionStorage.getItem(TOKEN_KEY)) return show("login");
  const match = location.hash.match(/^#\/bot\/([a-z0-9_-]+)$/);
  if (match) {
    state.bot = match[1];
    show("bot");
    poll(refreshBot);
  } else {
    state.bot = null;
    show("fleet");
    poll(refreshFleet);
  }
}

async function poll(refresh) {
  try {
    await refresh();
  } catch (err) {
    if (err instanceof Unauthorized) {
      sessionStorage.removeItem(TOKEN_KEY);
      $("#login-error").textContent = "The token was refused: sign in again.";
      return show("login");
    }
    console.error(err);
  }
  state.timer = setTimeout(() => poll(refresh), POLL_MS);
}

// -- fleet ---------------------------------------------------------------------------

function filters() {
  const params = new URLSearchParams();
  for (const name of ["q", "status", "exchange", "symbol", "label", "limit"]) {
    const value = $("#" + name).value.trim();
    if (value) params.set(name, value);
  }
  params.set("sort", state.sort);
  params.set("order", state.order);
  params.set("offset", state.offset);
  return params;
}

async function refreshFleet() {
  const [health, page] = await Promise.all([api("/fleet"), api("/fleet/bots?" + filters())]);
  renderHealth(health);
  renderBots(page);
}

function renderHealth(h) {
  const p99 = h.lateness_p99_ms === null ? "–" : h.lateness_p99_ms >= 60000 ? "≥ 60 s" : `≤ ${num(h.lateness_p99_ms, 0)} ms`;
  const queue = h.queue ? `${num(h.queue.queued, 0)} / ${num(h.queue.parked, 0)}` : "–";
  $("#health").replaceChildren(
    tile("running", num(h.bots.running, 0), "t-running"),
    tile("paused", num(h.bots.paused, 0)),
    tile("errored", num(h.bots.error, 0), "t-errored"),
    tile("stopped", num(h.bots.stopped, 0)),
    tile("ticks/s (1 min)", h.ticks_per_s === null ? "–" : num(h.ticks_per_s, 1)),
    tile("lateness p99", p99),
    tile("queued / parked", queue),
    tile("workers alive", h.workers === null ? "–" : num(h.workers, 0), "t-workers"),
  );
  const reasons = Object.values(h.reasons || {});
  $("#reasons").hidden = reasons.length === 0;
  $("#reasons").replaceChildren(...reasons.map((r) => el("div", {}, "⚠ " + r)));
  const pill = $("#health-ok");
  pill.className = "pill " + (h.ok ? "ok" : "bad");
  pill.textContent = h.ok ? "fleet ok" : h.ok === false ? "fleet degraded" : "fleet unknown";
}

function renderBots(page) {
  state.total = page.total;
  const rows = page.items.map((b) =>
    el("tr", { "data-bot": b.name },
      el("td", {}, el("a", { href: `#/bot/${b.name}` }, b.name)),
      el("td", {}, el("span", { class: `badge ${b.status}` }, b.status)),
      el("td", {}, b.strategy),
      el("td", {}, `${b.symbol} · ${b.exchange}`),
      el("td", { title: b.last_tick_at || "" }, ago(b.last_tick_at)),
      el("td", { class: "num" }, b.lateness_ms === null || b.lateness_ms === undefined ? "–" : `${num(b.lateness_ms, 1)} ms`),
      el("td", { class: "num" }, b.pnl ? signed(b.pnl.net) : "–"),
      el("td", { class: "num" }, num(b.orders, 0)),
      el("td", { class: "err", title: b.last_error || "" }, b.last_error || ""),
    ));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "9", class: "muted" }, "No bot matches.")));
  $("#bots tbody").replaceChildren(...rows);
  const first = page.total ? page.offset + 1 : 0;
  $("#page-info").textContent = `${num(first, 0)}–${num(page.offset + page.items.length, 0)} of ${num(page.total, 0)} bots`;
  $("#prev").disabled = page.offset === 0;
  $("#next").disabled = page.offset + page.items.length >= page.total;
  for (const th of document.querySelectorAll("#bots th[data-sort]")) {
    th.className = th.dataset.sort === state.sort ? `sorted-${state.order}` : "";
  }
}

function refetchFleet() {
  clearTimeout(state.timer);
  poll(refreshFleet);
}

// -- one bot -------------------------------------------------------------------------

async function refreshBot() {
  const name = state.bot;
  const [bot, pnl] = await Promise.all([api(`/bots/${name}`), api(`/bots/${name}/pnl?limit=400`)]);
  if (name !== state.bot) return;
  $("#bot-name").textContent = bot.name;
  const badge = $("#bot-status");
  badge.className = `badge ${bot.status}`;
  badge.textContent = bot.status;
  const can = { start: bot.status !== "running", stop: bot.status !== "stopped", pause: bot.status === "running", resume: bot.status === "paused" || bot.status === "error" };
  for (const button of document.querySelectorAll(".actions button")) button.disabled = !can[button.dataset.action];
  $("#bot-tiles").replaceChildren(
    tile("strategy", bot.strategy),
    tile("symbol", `${bot.symbol} · ${bot.exchange}`),
    tile("mode", bot.mode),
    tile("last tick", ago(bot.last_tick_at)),
    tile("ticks ok / failed", `${num(bot.ticks_ok, 0)} / ${num(bot.ticks_failed, 0)}`),
    tile("position", num(bot.pnl.position, 6)),
    tile("net PnL", signed(bot.pnl.net)),
    tile("fees", num(bot.pnl.fees)),
  );
  renderChart(pnl);
  table("#orders", ["side", "type", "amount", "price", "filled"], bot.open_orders, "No open order.");
  const fills = pnl.points.slice(-15).reverse().map((p) => ({ ...p, at: ago(p.at) }));
  table("#fills", ["at", "side", "amount", "price", "net"], fills, "No fill yet.");
  const ticks = bot.last_ticks.map((t) => ({ ...t, started_at: ago(t.started_at), error: t.error || "" }));
  table("#ticks", ["slot", "started_at", "lateness_ms", "duration_ms", "outcome", "error"], ticks, "No tick yet.");
  $("#config").textContent = JSON.stringify(bot.config, null, 2);
}

function table(sel, columns, rows, empty) {
  const head = el("tr", {}, ...columns.map((c) => el("th", {}, c.replace("_", " "))));
  const body = rows.map((r) => el("tr", { class: r.outcome === "failed" ? "neg" : "" }, ...columns.map((c) => el("td", {}, typeof r[c] === "number" ? num(r[c], 6) : String(r[c] ?? "")))));
  if (!body.length) body.push(el("tr", {}, el("td", { colspan: String(columns.length), class: "muted" }, empty)));
  $(sel).replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
}

function renderChart(pnl) {
  const svg = $("#chart");
  const pts = pnl.points;
  const ns = "http://www.w3.org/2000/svg";
  const make = (tag, attrs) => { const n = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); return n; };
  if (pts.length < 1) {
    svg.replaceChildren();
    $("#chart-note").textContent = "No fill yet: the curve starts with the first fill.";
    return;
  }
  const W = 800, H = 240, pad = 18;
  const xs = pts.map((p) => Date.parse(p.at));
  const ys = pts.map((p) => p.net);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y0 = Math.min(0, ...ys), y1 = Math.max(0, ...ys, y0 + 1e-9);
  const X = (x) => pad + ((x - x0) / (x1 - x0)) * (W - 2 * pad);
  const Y = (y) => H - pad - ((y - y0) / (y1 - y0)) * (H - 2 * pad);
  const line = pts.map((p, i) => `${X(xs[i]).toFixed(1)},${Y(p.net).toFixed(1)}`).join(" ");
  svg.replaceChildren(
    make("line", { class: "zero", x1: pad, x2: W - pad, y1: Y(0), y2: Y(0) }),
    make("polyline", { class: "net", points: pts.length > 1 ? line : `${line} ${W - pad},${Y(ys[0])}` }),
  );
  for (const [y, label] of [[y1, num(y1)], [y0, num(y0)]]) {
    const t = make("text", { x: 4, y: Math.min(H - 4, Math.max(12, Y(y))) });
    t.textContent = label;
    svg.append(t);
  }
  const last = pts[pts.length - 1];
  $("#chart-note").textContent = `Net PnL (${pnl.quote}) after each of ${pts.length} fills, marked at the fill's price. ` +
    `Equity now ${num(last.equity)} ${pnl.quote} (start ${num(pnl.start_equity)}).`;
}

async function act(action) {
  const name = state.bot;
  if (!confirm(`${action} bot ${name}?`)) return;
  const message = $("#bot-message");
  message.textContent = `${action}…`;
  try {
    const r = await api(`/bots/${name}/${action}`, { method: "POST" });
    message.textContent = `${r.bot}: ${r.change} (generation ${r.generation})`;
  } catch (err) {
    if (err instanceof Unauthorized) return route();
    message.textContent = `${action} failed: ${err.message}`;
  }
  clearTimeout(state.timer);
  poll(refreshBot);
}

// -- wiring --------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("#token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    try {
      await api("/fleet");
      $("#login-error").textContent = "";
      $("#token").value = "";
      route();
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
      $("#login-error").textContent = err instanceof Unauthorized ? "Wrong token." : `Cannot reach the API: ${err.message}`;
    }
  });
  $("#logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); route(); });
  let typing = null;
  $("#filters").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.offset = 0; refetchFleet(); }, 250);
  });
  $("#filters").addEventListener("submit", (e) => e.preventDefault());
  for (const th of document.querySelectorAll("#bots th[data-sort]")) {
    th.addEventListener("click", () => {
      state.order = state.sort === th.dataset.sort && state.order === "asc" ? "desc" : "asc";
      state.sort = th.dataset.sort;
      state.offset = 0;
      refetchFleet();
    });
  }
  $("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - Number($("#limit").value)); refetchFleet(); });
  $("#next").addEventListener("click", () => { state.offset += Number($("#limit").value); refetchFleet(); });
  for (const button of document.querySelectorAll(".actions button")) {
    button.addEventListener("click", () => act(button.dataset.action));
  }
  window.addEventListener("hashchange", route);
  route();
});
