// cnnlab lab: the page. Plain JavaScript, no build step, no library, nothing fetched from the internet.
"use strict";

const $ = (id) => document.getElementById(id);
const lab = { info: null, points: [], version: null, status: {}, stats: { latencies: [], redraws: 0 }, conv: null };
window.lab = lab; // for the browser tests and the curious

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function showError(id, err) {
  const el = $(id);
  el.hidden = !err;
  el.textContent = err ? String(err.message || err) : "";
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// --- tabs ------------------------------------------------------------------------------------------
for (const b of document.querySelectorAll("#tabs button")) {
  b.addEventListener("click", () => showView(b.dataset.view));
}
function showView(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.view === name);
  for (const v of document.querySelectorAll(".view")) v.classList.toggle("active", v.id === `view-${name}`);
  if (name === "train") drawCharts();
  if (name === "inside") look();
  if (name === "conv") { convLayers(); drawWidget(); }
  if (name === "keep") listRuns();
}

// --- build -----------------------------------------------------------------------------------------
function specText(layers) {
  return "[\n" + layers.map((l) => "  " + JSON.stringify(l)).join(",\n") + "\n]\n";
}

async function init() {
  lab.info = await api("/api/info");
  const data = $("data");
  for (const name of Object.keys(lab.info.datasets)) data.append(el("option", { value: name }, name));
  const preset = $("preset");
  for (const name of Object.keys(lab.info.specs)) preset.append(el("option", { value: name }, name));
  const opt = $("k-optimizer");
  for (const name of lab.info.optimizers) opt.append(el("option", { value: name }, name));
  for (const [k, v] of Object.entries(lab.info.knobs)) $(`k-${k}`).value = v;
  $("work-dir").textContent = lab.info.work_dir;
  const first = Object.keys(lab.info.specs).find((n) => n.includes("mnist")) || Object.keys(lab.info.specs)[0];
  preset.value = first;
  $("spec").value = specText(lab.info.specs[first]);
  updateTable();
  connect();
}

const updateTable = debounce(async () => {
  let t;
  try {
    t = await api("/api/table", { text: $("spec").value, data: $("data").value });
  } catch (e) { showError("table-error", e); return; }
  showError("table-error", t.error);
  const body = document.querySelector("#layer-table tbody");
  body.replaceChildren();
  for (const r of t.rows) {
    const tr = el("tr", { "data-index": r.index });
    if (!r.fits) tr.className = r.error ? "misfit" : "floored";
    tr.append(el("td", {}, r.index), el("td", {}, r.label),
      el("td", { class: "out" }, r.output ? r.output.join("×") : "—"),
      el("td", { class: "formula size" }, r.size_formula),
      el("td", { class: "formula params" }, r.params_formula || String(r.params)));
    body.append(tr);
  }
  $("total-params").textContent = t.total_params.toLocaleString("en-US");
}, 150);

$("spec").addEventListener("input", updateTable);
let zooFor = null; // the zoo list is built on demand: checking every model takes a few seconds
$("data").addEventListener("change", () => { updateTable(); zooFor = null; });
$("zoo").addEventListener("focus", () => { if (zooFor !== $("data").value) { zooFor = $("data").value; loadZoo(); } });
$("preset").addEventListener("change", () => { $("spec").value = specText(lab.info.specs[$("preset").value]); updateTable(); });

async function loadZoo() {
  const zoo = $("zoo");
  zoo.replaceChildren(el("option", { value: "" }, "(checking which models fit…)"));
  try {
    const r = await api(`/api/zoo?data=${encodeURIComponent($("data").value)}`);
    zoo.replaceChildren(el("option", { value: "" }, "(none)"));
    for (const m of r.models) zoo.append(el("option", { value: m.name }, `${m.name} — ${m.params.toLocaleString("en-US")} params`));
  } catch (e) { zoo.replaceChildren(el("option", { value: "" }, "(unavailable)")); }
}

$("build-net").addEventListener("click", async () => {
  try {
    await api("/api/model", { data: $("data").value, spec: $("spec").value });
    showError("table-error", null);
    showView("train");
  } catch (e) { showError("table-error", e); }
});
$("use-zoo").addEventListener("click", async () => {
  if (!$("zoo").value) return;
  try {
    await api("/api/model", { data: $("data").value, zoo: $("zoo").value });
    showError("table-error", null);
    showView("train");
  } catch (e) { showError("table-error", e); }
});

// --- train -----------------------------------------------------------------------------------------
function knobValues() {
  const out = { optimizer: $("k-optimizer").value };
  for (const k of ["lr", "momentum", "batch_size", "weight_decay"]) out[k] = Number($(`k-${k}`).value);
  return out;
}
for (const k of ["optimizer", "lr", "momentum", "batch_size", "weight_decay"]) {
  $(`k-${k}`).addEventListener("change", async () => {
    try { await api("/api/knobs", knobValues()); showError("train-error", null); } catch (e) { showError("train-error", e); }
  });
}
$("start").addEventListener("click", async () => {
  try { await api("/api/train/start", knobValues()); showError("train-error", null); } catch (e) { showError("train-error", e); }
});
for (const action of ["pause", "resume", "stop"]) {
  $(action).addEventListener("click", async () => {
    try { await api(`/api/train/${action}`, {}); showError("train-error", null); } catch (e) { showError("train-error", e); }
  });
}

function connect() {
  const source = new EventSource("/api/events");
  source.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    $("banner").hidden = true;
    const s = msg.status;
    if (s.version !== lab.version) { lab.version = s.version; lab.points = []; }
    lab.status = s;
    const training = s.state === "running" || s.state === "paused";
    $("conn").className = "dot " + (training ? "busy" : "ok");
    $("status-text").textContent = s.model ? `${s.model} on ${s.data} · ${s.params.toLocaleString("en-US")} params · ${s.state}` : "no network yet";
    if (s.error) showError("train-error", s.error);
    if (msg.points.length) {
      lab.points.push(...msg.points);
      drawCharts();
      const last = msg.points[msg.points.length - 1];
      lab.stats.latencies.push(Date.now() / 1000 - last.time); // step end -> curve drawn
      lab.stats.redraws += 1;
    }
    const train = lab.points.filter((p) => p.kind === "train");
    const speed = [...train].reverse().find((p) => p.images_per_second);
    $("train-info").textContent = `step ${s.step} · epoch ${train.length ? train[train.length - 1].epoch.toFixed(2) : "0"}` +
      (speed && s.state === "running" ? ` · ${Math.round(speed.images_per_second).toLocaleString("en-US")} images/s` : "");
    maybeLook();
  };
  source.onerror = () => {
    $("conn").className = "dot gone";
    $("status-text").textContent = "server gone";
    $("banner").textContent = "The lab server is not answering (stopped?). This page reconnects when it is back.";
    $("banner").hidden = false;
  };
}

function drawChart(canvas, series, yMax) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 44, B = 24, T = 8, R = 8;
  ctx.clearRect(0, 0, W, H);
  ctx.font = "11px sans-serif"; ctx.fillStyle = "#555"; ctx.strokeStyle = "#ccc";
  const all = series.flatMap((s) => s.points);
  if (!all.length) { ctx.fillText("no points yet: build a network and press Start", L, H / 2); return; }
  const xMax = Math.max(1, ...all.map((p) => p.x));
  const top = yMax ?? Math.max(1e-6, ...all.map((p) => p.y)) * 1.05;
  const X = (x) => L + (W - L - R) * x / xMax, Y = (y) => T + (H - T - B) * (1 - Math.min(y, top) / top);
  ctx.beginPath(); ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B); ctx.stroke();
  for (let i = 0; i <= 4; i++) {
    const y = top * i / 4;
    ctx.fillText(y.toFixed(top < 2 ? 2 : 1), 4, Y(y) + 4);
  }
  ctx.fillText(`step ${xMax}`, W - R - 60, H - 6);
  for (const s of series) {
    ctx.strokeStyle = s.color; ctx.lineWidth = 1.5; ctx.beginPath();
    s.points.forEach((p, i) => (i ? ctx.lineTo(X(p.x), Y(p.y)) : ctx.moveTo(X(p.x), Y(p.y))));
    ctx.stroke();
  }
}

function drawCharts() {
  const train = lab.points.filter((p) => p.kind === "train"), test = lab.points.filter((p) => p.kind === "test");
  const css = getComputedStyle(document.documentElement);
  const c1 = css.getPropertyValue("--train").trim(), c2 = css.getPropertyValue("--test").trim();
  drawChart($("loss-chart"), [
    { color: c1, points: train.map((p) => ({ x: p.step, y: p.loss })) },
    { color: c2, points: test.map((p) => ({ x: p.step, y: p.loss })) }]);
  drawChart($("acc-chart"), [
    { color: c1, points: train.map((p) => ({ x: p.step, y: p.acc })) },
    { color: c2, points: test.map((p) => ({ x: p.step, y: p.acc })) }], 1);
  $("loss-chart").dataset.points = String(train.length);
}

// --- look inside -----------------------------------------------------------------------------------
function grayCanvas(bytes, h, w, scale, rgb = false) {
  const c = el("canvas", { width: w, height: h });
  c.style.width = `${w * scale}px`; c.style.height = `${h * scale}px`;
  const ctx = c.getContext("2d"), img = ctx.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const [r, g, b] = rgb ? [bytes[3 * i], bytes[3 * i + 1], bytes[3 * i + 2]] : [bytes[i], bytes[i], bytes[i]];
    img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

function probBars(container, probs, classes) {
  container.replaceChildren();
  const best = probs.indexOf(Math.max(...probs));
  probs.forEach((p, i) => {
    const bar = el("div", { class: "bar" + (i === best ? " top" : "") });
    const fill = el("div"); fill.style.width = `${Math.round(p * 120)}px`;
    bar.append(el("span", { class: "label" }, classes[i]), fill, el("span", {}, (p * 100).toFixed(1) + "%"));
    container.append(bar);
  });
  container.dataset.sum = String(probs.reduce((a, b) => a + b, 0));
}

let lookBusy = false, lastLook = 0;
async function look() {
  if (lookBusy || !lab.status.model) return;
  lookBusy = true; lastLook = Date.now();
  try {
    const r = await api(`/api/inside?index=${Number($("image-index").value) || 0}`);
    const [c, h, w] = r.image.shape;
    $("input-image").replaceWith(Object.assign(grayCanvas(r.image.bytes, h, w, 84 / w, c === 3), { id: "input-image" }));
    probBars($("inside-probs"), r.probs, r.classes);
    $("inside-info").textContent = `label ${r.classes[r.label]} · step ${r.step}`;
    const filters = $("filters"); filters.replaceChildren();
    if (r.filters) for (const f of r.filters.filters) filters.append(grayCanvas(f, r.filters.side[0], r.filters.side[1], 5, r.filters.rgb));
    const overview = $("overview"); overview.replaceChildren();
    for (const layer of r.layers) {
      const col = el("div", { class: "layercol" });
      col.append(el("div", { class: "name" }, `${layer.name} ${layer.shape.join("×")}`));
      if (layer.kind === "maps") {
        const [h2, w2] = layer.side, scale = Math.max(1, Math.floor(56 / Math.max(h2, w2)));
        for (const m of layer.maps) col.append(grayCanvas(m, h2, w2, scale));
      } else {
        col.append(grayCanvas(layer.bytes, 1, layer.bytes.length, Math.max(2, Math.floor(120 / layer.bytes.length))));
      }
      overview.append(col);
    }
  } catch (e) { $("inside-info").textContent = String(e.message || e); }
  lookBusy = false;
}
function maybeLook() {
  if ($("view-inside").classList.contains("active") && $("auto-look").checked && lab.status.state === "running" && Date.now() - lastLook > 1500) look();
}
$("look").addEventListener("click", look);
$("image-index").addEventListener("change", look);

// --- the convolution, explained ---------------------------------------------------------------------
async function convLayers() {
  if (!lab.status.model) return;
  await showConv(true);
}

function cell(ctx, x, y, s, fill) { ctx.fillStyle = fill; ctx.fillRect(x * s, y * s, s - 1, s - 1); }

function drawConv() {
  const c = lab.conv; if (!c) return;
  const inp = c.input, n = inp.length, m = inp[0].length, canvas = $("c-input"), s = Math.max(4, Math.floor(320 / Math.max(n, m)));
  canvas.width = m * s; canvas.height = n * s;
  const ctx = canvas.getContext("2d");
  const flat = inp.flat(), lo = Math.min(...flat), hi = Math.max(...flat);
  for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) {
    const v = Math.round(255 * (inp[i][j] - lo) / ((hi - lo) || 1));
    cell(ctx, j, i, s, `rgb(${v},${v},${v})`);
  }
  const top = c.oy * c.stride[0], left = c.ox * c.stride[1];
  ctx.strokeStyle = "#ff7f0e"; ctx.lineWidth = 2;
  ctx.strokeRect(left * s, top * s, c.kernel[1] * s, c.kernel[0] * s);
  if (c.padding[0]) { ctx.strokeStyle = "#1f77b4"; ctx.lineWidth = 1; ctx.strokeRect(c.padding[1] * s, c.padding[0] * s, (m - 2 * c.padding[1]) * s, (n - 2 * c.padding[0]) * s); }
  const out = c.output, oc = $("c-output"), os = Math.max(4, Math.floor(240 / Math.max(out.length, out[0].length)));
  oc.width = out[0].length * os; oc.height = out.length * os;
  const octx = oc.getContext("2d"), of = out.flat(), olo = Math.min(...of), ohi = Math.max(...of);
  for (let i = 0; i < out.length; i++) for (let j = 0; j < out[0].length; j++) {
    const v = Math.round(255 * (out[i][j] - olo) / ((ohi - olo) || 1));
    cell(octx, j, i, os, `rgb(${v},${v},${v})`);
  }
  octx.strokeStyle = "#ff7f0e"; octx.lineWidth = 2; octx.strokeRect(c.ox * os, c.oy * os, os, os);
  const k = $("c-kernel"); k.replaceChildren();
  for (const row of c.weights) { const tr = el("tr"); for (const w of row) tr.append(el("td", {}, w.toFixed(3))); k.append(tr); }
  // the terms of the chosen input channel at the current position, from the input and the kernel
  const terms = [];
  for (let i = 0; i < c.kernel[0]; i++) for (let j = 0; j < c.kernel[1]; j++) terms.push([c.weights[i][j], inp[top + i][left + j]]);
  const partial = terms.reduce((a, [w, x]) => a + w * x, 0);
  $("c-formula").textContent = `channel ${c.in_channel}: ` + terms.map(([w, x]) => `${w.toFixed(3)}·${x < 0 ? `(${x.toFixed(3)})` : x.toFixed(3)}`).join(" + ") + ` = ${partial.toFixed(4)}`;
  const sums = c.partial_sums.map((p, i) => `${p.toFixed(4)}` + (i === c.in_channel ? "*" : "")).join(" + ");
  $("c-sum").textContent = `y[${c.channel}, ${c.oy}, ${c.ox}] = b + Σ over ${c.in_channels} input channels = ${c.bias.toFixed(4)} + ${sums} = ${c.total.toFixed(4)}` +
    `  (the layer computed ${c.actual.toFixed(4)}${c.agree ? ", the same" : ", DIFFERENT"})`;
}

async function showConv(keepLayer) {
  const q = (id) => Number($(id).value) || 0;
  try {
    const layer = keepLayer && $("c-layer").options.length ? q("c-layer") : q("c-layer");
    const r = await api(`/api/conv?index=${q("image-index")}&layer=${layer}&channel=${q("c-channel")}&y=${q("c-y")}&x=${q("c-x")}&in_channel=${q("c-in")}`);
    const sel = $("c-layer");
    if (sel.options.length !== r.layers.length) {
      sel.replaceChildren(...r.layers.map((n, i) => el("option", { value: i }, n)));
      sel.value = String(layer);
    }
    lab.conv = r;
    drawConv();
  } catch (e) { $("c-sum").textContent = String(e.message || e); }
}
$("c-show").addEventListener("click", () => showConv(false));
$("c-layer").addEventListener("change", () => showConv(false));
let sliding = null;
$("c-slide").addEventListener("click", () => {
  if (sliding) { clearInterval(sliding); sliding = null; return; }
  const c = lab.conv; if (!c) return;
  let pos = 0;
  sliding = setInterval(() => {
    const [oh, ow] = c.output_size;
    if (pos >= oh * ow) { clearInterval(sliding); sliding = null; return; }
    c.oy = Math.floor(pos / ow); c.ox = pos % ow; pos += 1;
    $("c-y").value = c.oy; $("c-x").value = c.ox;
    drawConv();
  }, 250);
});

function drawWidget() {
  const W = Number($("w-size").value), F = Number($("w-kernel").value), P = Number($("w-pad").value), S = Number($("w-stride").value);
  const canvas = $("w-canvas"), ctx = canvas.getContext("2d"), n = W + 2 * P, s = Math.floor(360 / Math.max(n, 1));
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const exact = (W - F + 2 * P) / S + 1, out = Math.floor(exact), fits = Number.isInteger((W - F + 2 * P) / S) && out >= 1;
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
    const pad = i < P || j < P || i >= P + W || j >= P + W;
    cell(ctx, j, i, s, pad ? "#e8f0fb" : "#ccc");
  }
  ctx.lineWidth = 2;
  for (let a = 0; a < Math.max(out, 0); a++) for (let b = 0; b < Math.max(out, 0); b++) {
    ctx.strokeStyle = `hsla(${(a * out + b) * 47 % 360}, 70%, 45%, 0.8)`;
    ctx.strokeRect(b * S * s + 2, a * S * s + 2, F * s - 4, F * s - 4);
  }
  const inner = `(${W} − ${F} + 2·${P})/${S} + 1`;
  $("w-formula").textContent = `W_out = ⌊${inner}⌋ = ` + (fits ? `${out}` : `⌊${exact.toFixed(2)}⌋ = ${Math.max(out, 0)} — dimensions don't fit`);
  $("w-formula").className = "formula" + (fits ? "" : " error");
  $("w-params").textContent = `one filter on C channels: F²·C + 1 = ${F}²·C + 1 weights and bias`;
}
for (const id of ["w-size", "w-kernel", "w-pad", "w-stride"]) $(id).addEventListener("input", drawWidget);

// --- draw --------------------------------------------------------------------------------------------
const pad = $("pad"), pctx = pad.getContext("2d");
pctx.lineCap = "round"; pctx.lineJoin = "round"; pctx.strokeStyle = "#fff"; pctx.lineWidth = 20;
let drawing = false;
function padPos(e) { const r = pad.getBoundingClientRect(); return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height]; }
pad.addEventListener("pointerdown", (e) => { drawing = true; const [x, y] = padPos(e); pctx.beginPath(); pctx.moveTo(x, y); pctx.lineTo(x + 0.1, y); pctx.stroke(); });
pad.addEventListener("pointermove", (e) => { if (!drawing) return; const [x, y] = padPos(e); pctx.lineTo(x, y); pctx.stroke(); });
window.addEventListener("pointerup", () => { if (drawing) { drawing = false; classify(); } });
$("clear").addEventListener("click", () => { pctx.clearRect(0, 0, pad.width, pad.height); $("draw-probs").replaceChildren(); });
$("classify").addEventListener("click", classify);

async function classify() {
  const n = 112, small = el("canvas", { width: n, height: n }), sctx = small.getContext("2d");
  sctx.drawImage(pad, 0, 0, n, n);
  const data = sctx.getImageData(0, 0, n, n).data, pixels = [];
  for (let i = 0; i < n; i++) { const row = []; for (let j = 0; j < n; j++) row.push(data[4 * (i * n + j) + 3] / 255); pixels.push(row); }
  try {
    const r = await api("/api/predict", { pixels });
    showError("draw-error", null);
    probBars($("draw-probs"), r.probs, r.classes);
    $("digit").replaceWith(Object.assign(grayCanvas(r.digit, 28, 28, 4), { id: "digit" }));
  } catch (e) { showError("draw-error", e); }
}

// --- keep --------------------------------------------------------------------------------------------
async function listRuns() {
  try {
    const r = await api("/api/runs");
    const ul = $("runs"); ul.replaceChildren();
    for (const run of r.runs) {
      const li = el("li", {}, run.name + " "), b = el("button", {}, "Load and look inside");
      b.addEventListener("click", async () => {
        try { await api("/api/load", { name: run.name }); showError("keep-error", null); showView("inside"); } catch (e) { showError("keep-error", e); }
      });
      li.append(b); ul.append(li);
    }
  } catch (e) { showError("keep-error", e); }
}
$("save").addEventListener("click", async () => {
  try {
    const r = await api("/api/save", { name: $("run-name").value });
    $("save-info").textContent = `saved: ${r.saved}`;
    showError("keep-error", null);
    listRuns();
  } catch (e) { $("save-info").textContent = ""; showError("keep-error", e); }
});

init().catch((e) => { $("banner").textContent = `cannot start: ${e.message || e}`; $("banner").hidden = false; });
