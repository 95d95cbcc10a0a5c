// pinsage explorer: a single page over the JSON endpoints of `pinsage serve` (app/explorer.py).
// Every piece of data is put into the page as text (textContent / text nodes), never as HTML.
// Offline (the static copy of `pinsage report`): window.PINSAGE_SNAPSHOT maps request paths to the
// answers the server gave for them, and the page reads those instead of the network.
"use strict";

const SNAPSHOT = window.PINSAGE_SNAPSHOT || null;
const K = 10;
const MAP_QUERY = (SNAPSHOT && SNAPSHOT.map_query) || "/map?n=2000&method=pca";
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// DOM helpers: strings become text nodes
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
const enc = encodeURIComponent;

// ---------------------------------------------------------------------------------------------
// the API: errors are the server's one-line {"error": ...} messages
class ApiError extends Error {}

function token() { return $("token").value.trim(); }

async function api(path, options) {
  if (SNAPSHOT) return fromSnapshot(path, options);
  const headers = { "Accept": "application/json" };
  if (token()) headers["Authorization"] = "Bearer " + token();
  const init = { method: "GET", headers };
  if (options && options.body !== undefined) {
    init.method = options.method || "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new ApiError("the server cannot be reached: " + e.message);
  }
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new ApiError((body && body.error) || `HTTP ${r.status} on ${path}`);
  return body;
}

function fromSnapshot(path, options) {
  if (options && options.body !== undefined) {
    throw new ApiError("this is the offline copy written by `pinsage report`: adding items needs `pinsage serve`");
  }
  if (path.startsWith("/search?")) return snapshotSearch(new URLSearchParams(path.slice(8)));
  if (Object.prototype.hasOwnProperty.call(SNAPSHOT.answers, path)) return SNAPSHOT.answers[path];
  throw new ApiError(`not in the offline snapshot (${path}): open it with \`pinsage serve\` for the whole catalogue`);
}

function snapshotSearch(params) {
  // offline only: the snapshot holds the cards of a sample of items; search their titles
  const q = (params.get("q") || "").trim().toLowerCase();
  const limit = Number(params.get("limit") || 20);
  const items = [];
  for (const [id, title] of SNAPSHOT.items) {
    const t = (title || "").toLowerCase();
    if (id === q) items.unshift({ id, title, match: "id" });
    else if (q && t.startsWith(q)) items.push({ id, title, match: "prefix" });
  }
  for (const [id, title] of SNAPSHOT.items) {
    const t = (title || "").toLowerCase();
    if (q && !t.startsWith(q) && t.includes(q) && id !== q) items.push({ id, title, match: "substring" });
  }
  return { query: q, items: items.slice(0, limit), more: items.length > limit };
}

function showError(msg) {
  const box = $("error");
  box.textContent = msg;
  box.hidden = !msg;
}

async function guarded(fn) {
  showError("");
  try {
    await fn();
  } catch (e) {
    showError(e instanceof ApiError ? e.message : "page error: " + e.message);
    if (!(e instanceof ApiError)) console.error(e);
  }
}

// ---------------------------------------------------------------------------------------------
// views
const VIEWS = ["search", "item", "user", "add", "map"];
function show(name) {
  for (const v of VIEWS) $("view-" + v).hidden = v !== name;
  for (const a of ["search", "map", "add"]) $("nav-" + a).classList.toggle("active", a === name);
}

function itemLink(id, title) {
  return el("a", { class: "item", href: "#/item/" + enc(id), "data-id": id }, title || "(no title)");
}

function itemLine(it) {
  return [itemLink(it.id, it.title), el("span", { class: "id" }, "id " + it.id)];
}

function bar(value, max) {
  const w = max > 0 ? Math.max(2, Math.round(86 * Math.max(0, value) / max)) : 2;
  return el("td", { class: "bar" }, el("span", { style: { width: w + "px" } }));
}

function offlineHint() {
  return SNAPSHOT ? `offline copy written by pinsage report: the cards of ${SNAPSHOT.items.length} items ` +
    `(the map's points) and of users ${SNAPSHOT.users.join(", ")}`
    : "type the start or any part of a title, or an item id; or open the map, or a user by id";
}

async function runSearch(q) {
  show("search");
  $("q").value = q;
  if (!q) { clear($("results")); $("search-info").textContent = offlineHint(); return; }
  const t0 = performance.now();
  const res = await api(`/search?q=${enc(q)}&limit=50`);
  const ms = Math.round(performance.now() - t0);
  const list = clear($("results"));
  for (const it of res.items) {
    list.appendChild(el("li", { class: "result" }, ...itemLine(it),
      it.match === "id" ? el("span", { class: "tag" }, "id match") : null));
  }
  $("search-info").textContent = res.items.length
    ? `${res.items.length}${res.more ? "+" : ""} match(es) for "${q}" (${ms} ms)`
    : `no title or id matches "${q}"`;
}

async function openItem(id) {
  show("item");
  $("item-title").textContent = id;  // until the card comes (or the error, without an old card under it)
  for (const part of ["item-meta", "item-similar", "item-nbr"]) clear($(part));
  const [card, sim] = await Promise.all([api(`/items/${enc(id)}`), api(`/items/${enc(id)}/similar?k=${K}`)]);
  $("item-title").textContent = card.title || "(no title)";
  const meta = clear($("item-meta"));
  meta.append("id " + card.id);
  if (card.year) meta.append(" · " + card.year);
  if (card.degree !== null && card.degree !== undefined) {
    meta.append(` · ${card.degree} engaged user(s)` + (card.inserted ? " given" : " in training"));
  }
  if (card.inserted) meta.append(" · ", el("span", { class: "tag new" }, "added after training"));
  if (card.categories && card.categories.length) {
    meta.append(" · ");
    for (const c of card.categories) meta.append(el("span", { class: "chip" }, c));
  }
  const nbrIds = new Set((card.neighbourhood || []).map((n) => n.id));
  const simTable = clear($("item-similar"));
  const maxScore = Math.max(0, ...sim.items.map((s) => s.score));
  sim.items.forEach((s, r) => {
    simTable.appendChild(el("tr", { class: "similar" },
      el("td", { class: "rank" }, r + 1),
      el("td", {}, itemLink(s.id, s.title), nbrIds.has(s.id) ? el("span", { class: "tag both" }, "in both") : null),
      el("td", { class: "num" }, s.score.toFixed(3)), bar(s.score, maxScore)));
  });
  const nbrTable = clear($("item-nbr"));
  if (card.neighbourhood === null) {
    const why = "no inductive files in these artifacts: no neighbourhood";
    nbrTable.appendChild(el("tr", {}, el("td", { class: "muted" }, why)));
  } else if (!card.neighbourhood.length) {
    nbrTable.appendChild(el("tr", {}, el("td", { class: "muted" }, "empty: no walk reached another item")));
  }
  const simIds = new Set(sim.items.map((s) => s.id));
  const maxW = Math.max(0, ...(card.neighbourhood || []).map((n) => n.weight));
  (card.neighbourhood || []).forEach((n, r) => {
    nbrTable.appendChild(el("tr", { class: "neighbour" },
      el("td", { class: "rank" }, r + 1),
      el("td", {}, itemLink(n.id, n.title), simIds.has(n.id) ? el("span", { class: "tag both" }, "in both") : null),
      el("td", { class: "num" }, n.weight.toFixed(3)), bar(n.weight, maxW)));
  });
}

async function openUser(id) {
  show("user");
  $("user-title").textContent = "User " + id;
  for (const part of ["user-meta", "user-history", "user-recs"]) clear($(part));
  const [card, recs] = await Promise.all([api(`/users/${enc(id)}`), api(`/users/${enc(id)}/recommendations?k=${K}`)]);
  $("user-meta").textContent = `${card.history_size} item(s) in the log`;
  const hist = clear($("user-history"));
  for (const it of card.recent) hist.appendChild(el("li", { class: "history" }, ...itemLine(it)));
  const table = clear($("user-recs"));
  const maxScore = Math.max(0, ...recs.items.map((s) => s.score));
  recs.items.forEach((s, r) => {
    table.appendChild(el("tr", { class: "rec" }, el("td", { class: "rank" }, r + 1),
      el("td", {}, itemLink(s.id, s.title)), el("td", { class: "num" }, s.score.toFixed(3)), bar(s.score, maxScore)));
  });
}

function listField(value) {
  return value.split(",").map((s) => s.trim()).filter((s) => s.length);
}

async function addItem(form) {
  const f = new FormData(form);
  const body = { id: f.get("id").trim() };
  if (f.get("title").trim()) body.title = f.get("title").trim();
  const cats = listField(f.get("categories"));
  if (cats.length) body.categories = cats;
  if (f.get("year").trim()) body.year = Number(f.get("year"));
  const users = listField(f.get("engaged_users"));
  if (users.length) body.engaged_users = users;
  const items = listField(f.get("co_engaged_items"));
  if (items.length) body.co_engaged_items = items;
  const res = await api("/items", { body });
  $("add-result").textContent = `added ${res.id} at index ${res.index} (${res.neighbours} walk neighbour(s))`;
  loadStatus().catch(() => {});
  location.hash = "#/item/" + enc(res.id);
}

// ---------------------------------------------------------------------------------------------
// the map: a canvas of the sampled catalogue, coloured by first category; click = item card
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
  "#393b79", "#e7ba52", "#637939", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363", "#9c9ede"];
let mapData = null;
const PAD = 14;

function mapXY(canvas, p) {
  return [PAD + p[2] * (canvas.width - 2 * PAD), PAD + (1 - p[3]) * (canvas.height - 2 * PAD)];
}

function nearest(canvas, x, y) {
  let best = null;
  let bestD = 8 * 8;
  for (const p of mapData.points) {
    const [px, py] = mapXY(canvas, p);
    const d = (px - x) * (px - x) + (py - y) * (py - y);
    if (d < bestD) { bestD = d; best = p; }
  }
  return best;
}

async function openMap() {
  show("map");
  if (!mapData) {
    $("map-info").textContent = "projecting…";
    mapData = await api(MAP_QUERY);
  }
  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const p of mapData.points) {
    const [x, y] = mapXY(canvas, p);
    ctx.fillStyle = p[4] >= 0 ? PALETTE[p[4] % PALETTE.length] : "#b8bec8";
    ctx.globalAlpha = 0.75;
    ctx.beginPath();
    ctx.arc(x, y, 3, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.globalAlpha = 1;
  $("map-info").textContent = `${mapData.method} of ${mapData.sample} of ${mapData.total} items` +
    " (coloured by first category; hover for the title, click for the card)";
  const legend = clear($("map-legend"));
  mapData.labels.slice(0, PALETTE.length).forEach((name, c) => {
    legend.appendChild(el("li", {}, el("i", { style: { background: PALETTE[c] } }), name));
  });
}

function wireMap() {
  const canvas = $("map");
  const tip = $("map-tip");
  const at = (ev) => {
    const r = canvas.getBoundingClientRect();
    return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height];
  };
  canvas.addEventListener("mousemove", (ev) => {
    if (!mapData) return;
    const p = nearest(canvas, ...at(ev));
    tip.hidden = !p;
    if (p) {
      tip.textContent = p[1] || p[0];
      const [x, y] = mapXY(canvas, p);
      tip.style.left = (x + 8) + "px";
      tip.style.top = (y - 22) + "px";
    }
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("click", (ev) => {
    if (!mapData) return;
    const p = nearest(canvas, ...at(ev));
    if (p) location.hash = "#/item/" + enc(p[0]);
  });
}

// ---------------------------------------------------------------------------------------------
// routing: #/ , #/search/<q>, #/item/<id>, #/user/<id>, #/add, #/map
function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const arg = parts.length > 1 ? decodeURIComponent(parts.slice(1).join("/")) : "";
  const key = location.hash || "#/";
  const t0 = performance.now();
  delete document.body.dataset.shown;
  return guarded(async () => {
    switch (parts[0]) {
      case "item": return openItem(arg);
      case "user": return openUser(arg);
      case "add": return show("add");
      case "map": return openMap();
      case "search": return runSearch(arg);
      default: return runSearch("");
    }
  }).then(() => {  // the view is drawn: tests wait for it, benchmarks/explorer.py reads the timing
    document.body.dataset.shown = key;
    performance.measure("pinsage-view", { start: t0 });
  });
}

async function loadStatus() {
  const h = await api("/healthz");
  const parts = [`${h.items} items`];
  if (h.items > h.base_items) parts.push(`${h.items - h.base_items} added`);
  if (SNAPSHOT) parts.push("offline copy");
  else if (!h.writable) parts.push("read-only");
  $("status").textContent = parts.join(" · ");
  if (SNAPSHOT || !h.writable || !h.inductive) $("nav-add").hidden = true;
  performance.mark("pinsage-status");
}

function go(hash) {
  if (location.hash === hash) route();  // the same view again: no hashchange event
  else location.hash = hash;
}

function init() {
  $("token").value = sessionStorage.getItem("pinsage-token") || "";
  $("token").addEventListener("change", () => sessionStorage.setItem("pinsage-token", token()));
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    go("#/search/" + enc($("q").value.trim()));
  });
  $("user-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $("user-id").value.trim();
    if (id) go("#/user/" + enc(id));
  });
  $("add-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(() => addItem(ev.target));
  });
  if (SNAPSHOT) $("token").parentNode.hidden = true;
  wireMap();
  window.addEventListener("hashchange", route);
  guarded(loadStatus);
  route();
}

init();
