// deconvviz serve: the page. Vanilla JS, no build step; it uses only the HTTP API of docs/serve.md.
"use strict";

const $ = (id) => document.getElementById(id);
const client = Math.random().toString(36).slice(2, 10);
const seqs = {};
const aborts = {};
let model = null;
let state = { image: null, layer: null, unit: null, rule: "deconvnet" };
let shown = {};        // what is on screen: {image, layer, unit, rule, topk}
let acts = null;       // the last activations answer
let thumbs = { cls: "", offset: 0, total: 0 };
let occlusionSource = null;

// ---------------------------------------------------------------- requests

// GET `path` with `params`; a newer request of the same `kind` aborts this one (and the server
// drops it if it has not run yet: client + seq).
async function api(kind, path, params, as = "json") {
  if (aborts[kind]) aborts[kind].abort();
  const ctl = new AbortController();
  aborts[kind] = ctl;
  seqs[kind] = (seqs[kind] || 0) + 1;
  const q = new URLSearchParams({ ...params, client, seq: seqs[kind] });
  const res = await fetch(`${path}?${q}`, { signal: ctl.signal });
  if (!res.ok) {
    let msg = `${res.status}`;
    try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  return as === "json" ? res.json() : res.blob();
}

const quiet = (e) => e.name === "AbortError" || (e.status === 409 && /superseded/.test(e.message));

// ---------------------------------------------------------------- state and URL

// The view the URL names; a layer, unit or rule the model does not have falls back (to the first
// layer, no unit, deconvnet), said once in #url-error.
function readUrl() {
  const q = new URLSearchParams(location.search);
  const problems = [];
  let layer = q.get("layer") || model.default_layer;
  let info = model.layers.find((l) => l.name === layer);
  if (!info) {
    info = model.layers[0];
    problems.push(`unknown layer "${layer}" in the URL; showing ${info.name}, the first layer`);
    layer = info.name;
  }
  const u = problems.length ? null : q.get("unit");  // a unit of an unknown layer means nothing
  let unit = u === null || u === "" ? null : Number(u);
  if (unit !== null && !(Number.isInteger(unit) && unit >= 0 && unit < info.shape[0])) {
    problems.push(`unknown unit "${u}" of ${layer} in the URL (units 0..${info.shape[0] - 1}); click a unit`);
    unit = null;
  }
  let rule = q.get("rule") || "deconvnet";
  if (!model.rules.includes(rule)) {
    problems.push(`unknown rule "${rule}" in the URL; showing deconvnet`);
    rule = "deconvnet";
  }
  const note = $("url-error");
  note.textContent = problems.join("; ");
  note.hidden = problems.length === 0;
  return { image: q.get("image") || "0", layer, unit, rule };
}

function urlOf(s) {
  const q = new URLSearchParams();
  for (const k of ["image", "layer", "unit", "rule"]) if (s[k] !== null) q.set(k, s[k]);
  return `?${q}`;
}

function setState(change) {
  state = { ...state, ...change };
  $("url-error").hidden = true;
  history.pushState(state, "", urlOf(state));
  render();
}

window.addEventListener("popstate", () => { state = readUrl(); render(); });

// ---------------------------------------------------------------- rendering

async function render() {
  const s = { ...state };
  $("layer").value = s.layer;
  $("rule").value = s.rule;
  if (s.image !== shown.image) {
    $("current").src = `/api/images/${encodeURIComponent(s.image)}.png`;
    $("current-caption").textContent = s.image.startsWith("u") ? "uploaded image" : `dataset image #${s.image}`;
    for (const t of document.querySelectorAll("#thumbs img")) t.classList.toggle("current", t.dataset.image === s.image);
    showPrediction(s.image);
    stopOcclusion();
  }
  if (s.image !== shown.image || s.layer !== shown.layer) {
    shown.image = s.image;
    shown.layer = s.layer;
    await showMaps(s);
  }
  markSelected(s.unit);
  if (s.unit === null) {
    shown.unit = null;
    $("projection").removeAttribute("src");  // hidden until a unit is clicked
    $("projection").dataset.ready = "";
    $("projection-caption").textContent = "click a unit";
    $("unit-title").textContent = "Unit: click a feature map";
    $("occlude-unit").disabled = true;
    return;
  }
  $("occlude-unit").disabled = false;
  $("unit-title").textContent = `${s.layer}, unit ${s.unit}`;
  showProjection(s);
  const tk = `${s.layer}/${s.unit}/${s.rule}`;
  if (tk !== shown.topk) showTopk(s, tk);
  shown.unit = s.unit;
  shown.rule = s.rule;
}

async function showPrediction(image) {
  try {
    const p = await api("predict", "/api/predict", { image });
    $("top5").innerHTML = "";
    for (const t of p.top) {
      const li = document.createElement("li");
      li.innerHTML = `<span class="name"></span><span class="bar"><span></span></span><span class="p"></span>`;
      li.querySelector(".name").textContent = t.name;
      li.querySelector(".bar span").style.width = `${(100 * t.prob).toFixed(1)}%`;
      li.querySelector(".p").textContent = `${(100 * t.prob).toFixed(1)}%`;
      $("top5").appendChild(li);
    }
  } catch (e) { if (!quiet(e)) $("top5").textContent = e.message; }
}

async function showMaps(s) {
  try {
    acts = await api("activations", "/api/activations", { image: s.image, layer: s.layer });
  } catch (e) {
    if (!quiet(e)) $("layer-info").textContent = e.message;
    return;
  }
  const info = model.layers.find((l) => l.name === s.layer);
  const silent = acts.silent.filter(Boolean).length;
  const deadText = acts.dead ? `, ${acts.dead.length} dead over the dataset` : "";
  $("layer-info").textContent =
    `${info.type}, ${acts.channels} units of ${acts.map[0]}x${acts.map[1]}` +
    (info.rf ? `, receptive field ${info.rf[0]}x${info.rf[1]} px` : "") + `; ${silent} silent here${deadText}`;
  const [h, w] = acts.map;
  const W = acts.cols * (w + acts.gap) - acts.gap;
  const H = acts.rows * (h + acts.gap) - acts.gap;
  const grid = $("grid");
  grid.src = acts.grid;
  const box = $("maps");
  const scale = Math.max(1, Math.floor(Math.min(560 / W, 640 / H)));
  box.style.width = `${W * scale}px`;
  box.style.height = `${H * scale}px`;
  const cells = $("cells");
  cells.innerHTML = "";
  const dead = new Set(acts.dead || []);
  for (let c = 0; c < acts.channels; c++) {
    const r = Math.floor(c / acts.cols), q = c % acts.cols;
    const d = document.createElement("div");
    d.className = "cell" + (acts.silent[c] ? " silent" : "") + (dead.has(c) ? " dead" : "");
    d.dataset.unit = c;
    d.style.left = `${(100 * q * (w + acts.gap)) / W}%`;
    d.style.top = `${(100 * r * (h + acts.gap)) / H}%`;
    d.style.width = `${(100 * w) / W}%`;
    d.style.height = `${(100 * h) / H}%`;
    cells.appendChild(d);
  }
}

function markSelected(unit) {
  for (const d of document.querySelectorAll("#cells .selected")) d.classList.remove("selected");
  if (unit !== null) {
    const d = document.querySelector(`#cells [data-unit="${unit}"]`);
    if (d) d.classList.add("selected");
  }
}

async function showProjection(s) {
  const img = $("projection");
  try {
    const blob = await api("projection", "/api/projection",
      { image: s.image, layer: s.layer, unit: s.unit, rule: s.rule }, "blob");
    if (state.unit === null) return;  // the unit was unselected meanwhile: keep the hint
    const url = URL.createObjectURL(blob);
    img.onload = () => {
      URL.revokeObjectURL(url);
      img.dataset.image = s.image;
      img.dataset.layer = s.layer;
      img.dataset.unit = s.unit;
      img.dataset.rule = s.rule;
      img.dataset.ready = "1";
    };
    img.dataset.ready = "";
    img.src = url;
    const a = acts && acts.layer === s.layer ? acts : null;
    $("projection-caption").textContent = `${s.rule} projection of unit ${s.unit}'s strongest activation` +
      (a ? ` (${a.max[s.unit].toPrecision(3)} at ${a.position[s.unit].join(",")})` : "");
  } catch (e) { if (!quiet(e)) $("projection-caption").textContent = e.message; }
}

async function showTopk(s, key) {
  const box = $("topk");
  const link = $("atlas-link");
  try {
    const t = await api("topk", "/api/topk", { layer: s.layer, unit: s.unit, rule: s.rule });
    shown.topk = key;
    box.innerHTML = "";
    if (t.atlas_page) { link.href = `/atlas/${t.atlas_page}`; link.hidden = false; } else link.hidden = true;
    if (!t.strip) { box.innerHTML = '<p class="note">no activations</p>'; return; }
    const n = t.top.length;
    const strip = document.createElement("div");
    strip.className = "strip";
    const im = document.createElement("img");
    im.src = t.strip;
    im.alt = `top ${n}: patches (top row) and ${t.rule} projections (bottom row)`;
    im.style.width = "100%";
    strip.appendChild(im);
    const labels = document.createElement("div");
    labels.className = "labels";
    for (const e of t.top) {
      const a = document.createElement("a");
      a.href = "#";
      a.textContent = `#${e.image}`;
      a.title = `value ${e.value.toPrecision(3)} at ${e.position.join(",")}: open this image`;
      a.onclick = (ev) => { ev.preventDefault(); setState({ image: String(e.image) }); };
      labels.appendChild(a);
    }
    strip.appendChild(labels);
    box.appendChild(strip);
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = `top ${n} over the ${t.source === "atlas" ? "atlas's" : "scanned"} images: patches (top) and ${t.rule} projections (bottom)` + (t.dead ? "; this unit is dead" : "");
    box.appendChild(note);
  } catch (e) {
    if (quiet(e)) return;
    link.hidden = true;
    box.innerHTML = "";
    const p = document.createElement("p");
    p.className = "note";
    p.textContent = /^scanning/.test(e.message) ? `${e.message} images; the top-k appears when the scan is done` : e.message;
    box.appendChild(p);
    if (/^scanning/.test(e.message)) setTimeout(() => { if (`${state.layer}/${state.unit}/${state.rule}` === key) showTopk(state, key); }, 1500);
  }
}

// ---------------------------------------------------------------- occlusion (server-sent events)

function stopOcclusion() {
  if (occlusionSource) { occlusionSource.close(); occlusionSource = null; }
  $("occlusion").hidden = true;  // the map belonged to the previous image
  $("occlusion-caption").textContent = "";
}

function heat(v) {  // 0..1 -> blue .. red
  const r = Math.round(255 * Math.min(1, Math.max(0, 2 * v - 0.5)));
  const b = Math.round(255 * Math.min(1, Math.max(0, 1.5 - 2 * v)));
  const g = Math.round(255 * (1 - Math.abs(2 * v - 1)));
  return `rgb(${r},${g},${b})`;
}

function occlude(target) {
  stopOcclusion();
  seqs.occlusion = (seqs.occlusion || 0) + 1;
  const params = { image: state.image, target, client, seq: seqs.occlusion };
  if (target === "unit") { params.layer = state.layer; params.unit = state.unit; }
  const src = new EventSource(`/api/occlusion?${new URLSearchParams(params)}`);
  occlusionSource = src;
  const canvas = $("occlusion");
  const ctx = canvas.getContext("2d");
  let meta = null, rows = 0, cell = 8, top = 0;
  canvas.dataset.done = "";
  canvas.dataset.rows = 0;
  src.addEventListener("meta", (ev) => {
    meta = JSON.parse(ev.data);
    cell = Math.max(4, Math.floor(192 / Math.max(meta.xs.length, meta.ys.length)));
    canvas.width = meta.xs.length * cell;
    canvas.height = meta.ys.length * cell;
    ctx.fillStyle = "#ddd";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    canvas.hidden = false;
    top = meta.base;
    const what = meta.target === "class" ? `p(${meta.name})` : `${meta.layer} unit ${meta.unit}'s total activation`;
    $("occlusion-caption").textContent = `${what} with a grey ${meta.size}px square at each position (red = as high as unoccluded, ${meta.base.toPrecision(3)}; blue = 0)`;
  });
  src.addEventListener("row", (ev) => {
    const r = JSON.parse(ev.data);
    r.values.forEach((v, j) => {
      ctx.fillStyle = heat(top > 0 ? v / top : 0);
      ctx.fillRect(j * cell, r.row * cell, cell, cell);
    });
    rows += 1;
    canvas.dataset.rows = rows;
  });
  const end = () => { src.close(); if (occlusionSource === src) occlusionSource = null; canvas.dataset.done = "1"; };
  src.addEventListener("done", end);
  src.addEventListener("stop", end);
  src.onerror = end;
}

// ---------------------------------------------------------------- image picker

async function loadThumbs(reset) {
  if (reset) { thumbs.offset = 0; $("thumbs").innerHTML = ""; }
  const params = { offset: thumbs.offset, limit: 48 };
  if (thumbs.cls !== "") params.class = thumbs.cls;
  const r = await api("images", "/api/images", params);
  thumbs.total = r.total;
  for (const im of r.images) {
    const b = document.createElement("img");
    b.src = `/api/images/${im.id}.png`;
    b.loading = "lazy";
    b.dataset.image = im.id;
    b.alt = `image ${im.id}`;
    b.title = `#${im.id}` + (im.label !== null && model.classes[im.label] ? ` ${model.classes[im.label]}` : "");
    b.onclick = () => setState({ image: im.id });
    if (im.id === state.image) b.classList.add("current");
    $("thumbs").appendChild(b);
  }
  thumbs.offset += r.images.length;
  $("more").hidden = thumbs.offset >= thumbs.total;
  $("thumb-count").textContent = `${thumbs.offset} of ${thumbs.total}`;
}

async function upload(file) {
  $("upload-error").textContent = "";
  const res = await fetch("/api/upload", { method: "POST", body: file });
  const r = await res.json();
  if (!res.ok) { $("upload-error").textContent = r.error; return; }
  setState({ image: r.id });
}

function setupPicker() {
  const sel = $("class-filter");
  model.classes.forEach((c, i) => { const o = document.createElement("option"); o.value = i; o.textContent = c; sel.appendChild(o); });
  if (!model.labels) sel.disabled = true;
  sel.onchange = () => { thumbs.cls = sel.value; loadThumbs(true); };
  $("more").onclick = () => loadThumbs(false);
  $("index-search").onchange = (ev) => {
    const i = Number(ev.target.value);
    if (Number.isInteger(i) && i >= 0 && i < model.images) setState({ image: String(i) });
  };
  const drop = $("drop");
  drop.ondragover = (ev) => { ev.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (ev) => { ev.preventDefault(); drop.classList.remove("over"); if (ev.dataTransfer.files[0]) upload(ev.dataTransfer.files[0]); };
  $("file").onchange = (ev) => { if (ev.target.files[0]) upload(ev.target.files[0]); };
  const local = ["localhost", "127.0.0.1", "[::1]"].includes(location.hostname);
  if (local && navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    $("webcam-box").hidden = false;
    $("webcam").onclick = async () => {
      try {
        const stream = await navigator.mediaDevices.getUserMedia({ video: true });
        $("video").srcObject = stream;
        $("video").hidden = false;
        $("snap").hidden = false;
      } catch (e) { $("upload-error").textContent = `webcam: ${e.message}`; }
    };
    $("snap").onclick = () => {
      const v = $("video"), c = document.createElement("canvas");
      c.width = v.videoWidth; c.height = v.videoHeight;
      c.getContext("2d").drawImage(v, 0, 0);
      c.toBlob((b) => upload(b), "image/png");
    };
  }
}

// ---------------------------------------------------------------- maps: hover and click

function setupMaps() {
  const cells = $("cells"), tip = $("tip");
  cells.onmousemove = (ev) => {
    const d = ev.target.closest(".cell");
    if (!d || !acts) { tip.hidden = true; return; }
    const c = Number(d.dataset.unit);
    const dead = acts.dead && acts.dead.includes(c) ? " (dead over the dataset)" : "";
    tip.textContent = `unit ${c}: max ${acts.max[c].toPrecision(3)} at (${acts.position[c].join(", ")})${dead}`;
    tip.hidden = false;
    tip.style.left = `${ev.clientX + 12}px`;
    tip.style.top = `${ev.clientY + 12}px`;
  };
  cells.onmouseleave = () => { tip.hidden = true; };
  cells.onclick = (ev) => {
    const d = ev.target.closest(".cell");
    if (d) setState({ unit: Number(d.dataset.unit) });
  };
}

// ---------------------------------------------------------------- scan progress

async function pollScan() {
  const m = await (await fetch("/api/model")).json();
  const s = m.scan, badge = $("scan");
  if (m.topk === "atlas") { badge.textContent = "top-k: atlas"; return; }
  if (!s) { badge.textContent = ""; return; }
  if (s.error) { badge.textContent = `scan failed: ${s.error}`; badge.className = "badge error"; return; }
  if (s.finished) { badge.textContent = `top-k: ${s.total} images scanned`; badge.className = "badge done"; if (acts && !acts.dead) { shown.layer = null; render(); } return; }
  badge.textContent = `scanning ${s.done}/${s.total}`;
  setTimeout(pollScan, 1000);
}

// ---------------------------------------------------------------- start

async function main() {
  model = await (await fetch("/api/model")).json();
  $("title").textContent = model.title;
  document.title = `deconvviz: ${model.title}`;
  for (const l of model.layers) {
    const o = document.createElement("option");
    o.value = l.name;
    o.textContent = `${l.name} (${l.type}, ${l.shape.join("x")})`;
    $("layer").appendChild(o);
  }
  for (const r of model.rules) {
    const o = document.createElement("option");
    o.value = r; o.textContent = r;
    $("rule").appendChild(o);
  }
  $("layer").onchange = (ev) => setState({ layer: ev.target.value, unit: null });
  $("rule").onchange = (ev) => setState({ rule: ev.target.value });
  $("occlude-class").onclick = () => occlude("class");
  $("occlude-unit").onclick = () => occlude("unit");
  setupPicker();
  setupMaps();
  state = readUrl();
  history.replaceState(state, "", $("url-error").hidden ? location.search || "?" : urlOf(state));
  loadThumbs(true);
  pollScan();
  await render();
  document.body.dataset.ready = "1";
}

main();
