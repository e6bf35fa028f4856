// padim inspection page: upload images, show heat map, mask and verdict; the threshold slider
// re-draws masks and verdicts in the browser from the raw anomaly maps (no new requests).
"use strict";

// The model input: a side (square) or [width, height].
const inputSize = (size) => (Array.isArray(size) ? `${size[0]}×${size[1]}` : `${size}×${size}`);

const state = { name: null, model: null, threshold: 0, results: [] };
const modelPath = () => `/v1/models/${encodeURIComponent(state.name)}`;
const $ = (id) => document.getElementById(id);


function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// The models the service serves, in the picker. One model is chosen; with several the user
// chooses (a photo scored by the alphabetically first product's model means nothing).
async function loadModels() {
  const res = await api("/v1/models");
  if (!res.ok) throw new Error(`models: HTTP ${res.status}`);
  const { models } = await res.json();
  if (!models.length) throw new Error("the service has no models");
  const picker = $("model-picker");
  picker.replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  picker.disabled = models.length === 1;
  if (models.length === 1) {
    await loadModel(models[0].name);
    return;
  }
  const choose = new Option(`choose one of ${models.length} models…`, "");
  choose.disabled = true;
  picker.prepend(choose);
  picker.value = "";
  $("model").textContent = "choose the model of the product to inspect";
}

async function loadModel(name) {
  state.name = name;
  $("model-picker").value = name;
  $("model").textContent = `loading ${name}…`;
  const res = await api(modelPath());
  const m = await res.json();
  if (!res.ok) throw new Error(m.error ? m.error.message : `model ${name}: HTTP ${res.status}`);
  state.model = m;
  $("model").textContent =
    `${m.backbone} · ${inputSize(m.input_size)} · trained on ${m.n_train ?? "?"} images · ` +
    `threshold ${m.threshold.toFixed(2)} · ${m.model_id}`;
  $("limit").textContent = (m.max_upload_bytes / 1048576).toFixed(0);
  const slider = $("threshold");
  slider.max = (m.threshold * 2.5).toPrecision(6);
  slider.step = (m.threshold / 500).toPrecision(4);
  setThreshold(m.threshold);
}

async function checkHealth() {
  const dot = $("health");
  try {
    const res = await api("/v1/health");
    dot.classList.toggle("ok", res.ok);
    dot.classList.toggle("down", !res.ok);
  } catch {
    dot.classList.remove("ok");
    dot.classList.add("down");
  }
}

async function loadExamples() {
  const res = await api("/v1/examples");
  if (!res.ok) return;
  const box = $("examples");
  const examples = await res.json();
  if (!examples.length) {
    box.textContent = "No examples: start padim serve with --examples FOLDER.";
  }
  for (const ex of examples) {
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "thumb";
    btn.title = ex.name;
    btn.dataset.testid = "example";
    const img = document.createElement("img");
    img.src = ex.url;
    img.alt = ex.name;
    const cap = document.createElement("span");
    cap.textContent = ex.name;
    btn.append(img, cap);
    btn.addEventListener("click", async () => {
      const blob = await (await api(ex.url)).blob();
      await predictFiles([new File([blob], ex.name, { type: blob.type })]);
    });
    box.append(btn);
  }
}

function setThreshold(value) {
  state.threshold = value;
  $("threshold").value = value;
  $("threshold-value").textContent = value.toFixed(2);
  // cards of another model keep the verdicts they were drawn with
  for (const r of state.results) if (r.body.model === state.name) drawDecision(r);
}

// The normalised score's width: the model's spread of held-out good scores (a tenth of the
// threshold for models without one), as the server's pictures use it.
function scoreSpread(thr) {
  return state.model.score_scale ? state.model.score_scale.scale : thr / 10;
}

// matplotlib's jet, as padim's pictures colour maps: (x, value) break points per channel.
const JET = [
  [[0, 0], [0.35, 0], [0.66, 1], [0.89, 1], [1, 0.5]],
  [[0, 0], [0.125, 0], [0.375, 1], [0.64, 1], [0.91, 0], [1, 0]],
  [[0, 0.5], [0.11, 1], [0.34, 1], [0.65, 0], [1, 0]],
];

function jet(x, points) {
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1];
    const [x1, y1] = points[i];
    if (x <= x1) return y0 + ((x - x0) / (x1 - x0 || 1)) * (y1 - y0);
  }
  return points[points.length - 1][1];
}

// The heat map drawn from the raw map (at the model input, where the image shown is),
// coloured on the normalised score at the model's threshold, like the server's pictures.
function heatCanvas(map, w, h, thr) {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const spread = scoreSpread(thr);
  for (let i = 0; i < w * h; i++) {
    const z = Math.max(-60, Math.min(60, (map[i] - thr) / spread));
    const x = 1 / (1 + Math.exp(-z));
    img.data.set([0, 1, 2].map((c) => Math.round(255 * jet(x, JET[c]))).concat(255), i * 4);
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

function decodeMap(m) {
  const bytes = Uint8Array.from(atob(m.data), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

function loadImage(b64) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("bad picture from the server"));
    img.src = `data:image/png;base64,${b64}`;
  });
}

async function predictFiles(files) {
  if (!state.name) {
    setStatus("choose a model first (the product these images show)", true);
    return;
  }
  for (const file of files) {
    setStatus(`scoring ${file.name}…`);
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const url = `${modelPath()}/predict?include=input,map`;
      const res = await api(url, { method: "POST", body: form });
      const body = await res.json();
      if (!res.ok) {
        setStatus(`${file.name}: ${body.error ? body.error.message : `HTTP ${res.status}`}`, true);
        continue;
      }
      await addResult(body, file);
      setStatus(`${file.name}: scored in ${body.timings_ms.total.toFixed(0)} ms`);
    } catch (err) {
      setStatus(`${file.name}: ${err.message}`, true);
    }
  }
}

// Feedback on a recorded result (padim serve --record): false alarm or confirmed defect for an
// anomalous verdict, missed defect for a good one (its image goes along: good images are not
// all kept). The service records who said it (the token's holder).
function addFeedback(node, body, file) {
  const box = node.querySelector(".feedback");
  if (body.record_id === undefined || body.record_id === null) return;
  box.hidden = false;
  const flagged = body.verdict !== "good";
  for (const btn of box.querySelectorAll("button")) {
    const label = btn.dataset.label;
    btn.hidden = flagged ? label === "missed_defect" : label !== "missed_defect";
    btn.addEventListener("click", async () => {
      const form = new FormData();
      form.append("label", label);
      if (label === "missed_defect") form.append("image", file, file.name);
      const state = box.querySelector(".feedback-state");
      try {
        const res = await api(`/v1/records/${body.record_id}/feedback`, { method: "POST", body: form });
        const answer = await res.json();
        if (!res.ok) throw new Error(answer.error ? answer.error.message : `HTTP ${res.status}`);
        state.textContent = `saved: ${answer.label.replace("_", " ")} (by ${answer.author})`;
        box.dataset.saved = answer.label;
      } catch (err) {
        state.textContent = `not saved: ${err.message}`;
      }
    });
  }
}

async function addResult(body, file) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  const w = body.anomaly_map.width;
  const h = body.anomaly_map.height;
  const r = {
    body, node, w, h,
    map: decodeMap(body.anomaly_map),
    input: await loadImage(body.pictures.input),
  };
  r.heat = heatCanvas(r.map, w, h, body.threshold);
  node.querySelector(".name").textContent = body.filename;
  const m = state.model;
  node.querySelector(".model-name").textContent =
    `${body.model} (${m.backbone}, ${inputSize(m.input_size)}, ${m.n_train ?? "?"} images)`;
  node.dataset.model = body.model;
  const warning = node.querySelector(".warning");
  warning.textContent = (body.warnings || []).join(" ");
  warning.hidden = !(body.warnings || []).length;
  const a = body.alignment;
  const align = node.querySelector(".alignment");
  align.hidden = !a;
  if (a) {
    align.textContent =
      (a.aligned ? "aligned onto the reference part: " : `CANNOT ALIGN: ${a.reason}; the best found: `) +
      `shift ${a.shift[0].toFixed(1)}, ${a.shift[1].toFixed(1)} px · angle ${a.angle.toFixed(2)}° · ` +
      `scale ${a.scale.toFixed(3)} · quality ${a.quality.toFixed(3)}`;
    align.classList.toggle("bad", !a.aligned);
    node.querySelector(".input-caption").textContent = "image aligned onto the reference (model input)";
  }
  for (const c of node.querySelectorAll("canvas")) {
    c.width = w;
    c.height = h;
  }
  node.querySelector("canvas.input").getContext("2d").drawImage(r.input, 0, 0, w, h);
  const t = body.timings_ms;
  node.querySelector(".timings").textContent =
    `decode ${t.decode.toFixed(0)} ms · queue ${t.queue.toFixed(0)} ms · model ` +
    `${t.inference.toFixed(0)} ms (batch of ${body.batch_size}) · total ${t.total.toFixed(0)} ms`;
  addFeedback(node, body, file);
  state.results.unshift(r);
  $("results").prepend(node);
  drawDecision(r);
}

// Mask, outline, verdict and score bar at the current slider threshold.
function drawDecision(r) {
  const { w, h, map, node, body } = r;
  const thr = state.threshold;
  const mask = new Uint8Array(w * h);
  let count = 0;
  for (let i = 0; i < w * h; i++) {
    if (map[i] > thr) { mask[i] = 1; count++; }
  }
  const maskCtx = node.querySelector("canvas.mask").getContext("2d");
  const maskImg = maskCtx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const v = mask[i] ? 255 : 0;
    maskImg.data.set([v, v, v, 255], i * 4);
  }
  maskCtx.putImageData(maskImg, 0, 0);

  const ctx = node.querySelector("canvas.overlay").getContext("2d");
  ctx.globalAlpha = 1;
  ctx.drawImage(r.input, 0, 0, w, h);
  ctx.globalAlpha = 0.45;
  ctx.drawImage(r.heat, 0, 0, w, h);
  ctx.globalAlpha = 1;
  const over = ctx.getImageData(0, 0, w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!mask[i]) continue;
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w];
      if (edge) over.data.set([255, 255, 255, 255], i * 4);
    }
  }
  ctx.putImageData(over, 0, 0);
  const regions = findRegions(mask, w, h);
  ctx.strokeStyle = "#ff00ff"; // magenta boxes, as on padim's overlays
  ctx.lineWidth = 2;
  for (const b of regions) ctx.strokeRect(b.x0 - 1, b.y0 - 1, b.x1 - b.x0 + 3, b.y1 - b.y0 + 3);
  node.dataset.regions = String(regions.length);

  const unaligned = body.verdict === "cannot_align"; // never good, whatever the slider says
  const anomalous = unaligned || body.score > thr;
  const verdict = node.querySelector(".verdict");
  verdict.textContent = unaligned ? "CANNOT ALIGN" : anomalous ? "ANOMALOUS" : "GOOD";
  verdict.className = `verdict ${anomalous ? "bad" : "good"}`;
  node.dataset.verdict = unaligned ? "cannot_align" : anomalous ? "anomalous" : "good";
  node.dataset.maskPixels = String(count);
  const spread = scoreSpread(thr);
  const normalised = 1 / (1 + Math.exp(-Math.max(-60, Math.min(60, (body.score - thr) / spread))));
  node.querySelector(".score").textContent =
    `score ${body.score.toFixed(2)} (normalised ${normalised.toFixed(3)}) vs threshold ` +
    `${thr.toFixed(2)} · ${regions.length} region${regions.length === 1 ? "" : "s"} · ` +
    `${(100 * count / (w * h)).toFixed(1)}% of pixels above`;
  const scale = Math.max(thr * 2, body.score * 1.05, 1e-9);
  node.querySelector(".fill").style.width = `${Math.min(100, (100 * body.score) / scale)}%`;
  node.querySelector(".fill").classList.toggle("bad", anomalous);
  node.querySelector(".tick").style.left = `${(100 * thr) / scale}%`;
}

// Connected regions (8-neighbours) of the mask at the slider threshold: bounding boxes.
function findRegions(mask, w, h) {
  const seen = new Uint8Array(w * h);
  const out = [];
  for (let start = 0; start < w * h; start++) {
    if (!mask[start] || seen[start]) continue;
    const box = { x0: w, y0: h, x1: 0, y1: 0 };
    const stack = [start];
    seen[start] = 1;
    while (stack.length) {
      const i = stack.pop();
      const x = i % w;
      const y = (i - x) / w;
      box.x0 = Math.min(box.x0, x); box.x1 = Math.max(box.x1, x);
      box.y0 = Math.min(box.y0, y); box.y1 = Math.max(box.y1, y);
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const nx = x + dx;
          const ny = y + dy;
          if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue;
          const j = ny * w + nx;
          if (mask[j] && !seen[j]) { seen[j] = 1; stack.push(j); }
        }
      }
    }
    out.push(box);
  }
  return out;
}

function wire() {
  const input = $("files");
  input.addEventListener("change", () => {
    predictFiles([...input.files]);
    input.value = "";
  });
  const drop = $("drop");
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => predictFiles([...e.dataTransfer.files]));
  $("threshold").addEventListener("input", (e) => setThreshold(parseFloat(e.target.value)));
  $("reset").addEventListener("click", () => setThreshold(state.model.threshold));
  $("model-picker").addEventListener("change", async (e) => {
    try {
      await loadModel(e.target.value);
      setStatus(`model ${state.name}: threshold ${state.model.threshold.toFixed(2)}`);
    } catch (err) {
      setStatus(err.message, true);
    }
  });
}

async function main() {
  wire();
  checkHealth();
  setInterval(checkHealth, 10000);
  try {
    await loadModels();
    await loadExamples();
    document.body.dataset.ready = "true";
  } catch (err) {
    setStatus(`cannot reach the service: ${err.message}`, true);
  }
}

main();
