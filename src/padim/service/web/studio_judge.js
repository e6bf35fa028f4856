// padim studio, page 3: judging a version on the product's test images (good ones never
// trained on, and the defects). The score histogram of good vs defective with the operating
// points; a threshold picked with the slider, the number or by dragging on the histogram, with
// the false-alarm and catch rates and their 95 % intervals (counted by the service); the
// images with mistakes first, each with its heat map; another version side by side.
"use strict";

const judging = { a: null, b: null, threshold: null, timer: null, dragging: false };
const COLOURS = { good: "#2f7d4f", defect: "#c2410c", threshold: "#111", point: "#7b8494" };

function startJudge() {
  $("judge-version").addEventListener("change", guarded(loadEvaluations));
  $("compare").addEventListener("change", guarded(loadEvaluations));
  $("judge-run").addEventListener("click", guarded(judgeVersion));
  $("threshold").addEventListener("input", () => setThreshold(Number($("threshold").value)));
  $("threshold-value").addEventListener("change", () => setThreshold(Number($("threshold-value").value)));
  $("set-point").addEventListener("click", guarded(setOperatingPoint));
  const canvas = $("histogram");
  const drag = (e) => {
    if (!judging.dragging || !judging.a) return;
    const box = canvas.getBoundingClientRect();
    const [lo, hi] = judging.range;
    setThreshold(lo + ((e.clientX - box.left) / box.width) * (hi - lo));
  };
  canvas.addEventListener("pointerdown", (e) => { judging.dragging = true; drag(e); });
  canvas.addEventListener("pointermove", drag);
  window.addEventListener("pointerup", () => { judging.dragging = false; });
}

async function loadJudge(select) {
  const { versions } = await apiJson(`/v1/products/${enc(state.product)}/versions`);
  const numbers = versions.map((v) => v.version).reverse();
  const options = (none) => [
    ...(none ? [new Option("–", "")] : []),
    ...numbers.map((n) => new Option(`v${n}`, String(n))),
  ];
  const keep = select || $("judge-version").value;
  $("judge-version").replaceChildren(...options(false));
  const before = $("compare").value;
  $("compare").replaceChildren(...options(true));
  if (numbers.length) $("judge-version").value = numbers.includes(Number(keep)) ? keep : String(numbers[0]);
  $("compare").value = numbers.includes(Number(before)) ? before : "";
  if (!numbers.length) {
    say("no versions yet: train one (2)");
    return;
  }
  await loadEvaluations();
}

async function evaluationOf(version) {
  try {
    return await apiJson(`/v1/studio/products/${enc(state.product)}/versions/${version}/evaluation`);
  } catch (err) {
    if (err.status === 404) return null;
    throw err;
  }
}

async function loadEvaluations() {
  const a = $("judge-version").value;
  const b = $("compare").value;
  [judging.a, judging.b] = await Promise.all([evaluationOf(a), b ? evaluationOf(b) : null]);
  $("judge-run").hidden = Boolean(judging.a);
  $("look").replaceChildren(el("p", "Choose an image.", "hint"));
  if (!judging.a) {
    $("judged").replaceChildren(el("p", `version ${a} has not been judged yet: Judge it`, "hint"));
    $("rates").textContent = "";
    return;
  }
  if (!judging.a.images.length) {
    $("judged").replaceChildren(el("p", "no test images yet: add good images (a fifth of them " +
      "are kept apart to judge with) and defective ones", "hint"));
    $("rates").textContent = "";
    return;
  }
  const scores = [judging.a, judging.b].filter(Boolean).flatMap((r) => r.images.map((i) => i.score));
  const points = Object.values(judging.a.operating_points);
  const lo = Math.min(...scores, ...points);
  const hi = Math.max(...scores, ...points);
  const pad = (hi - lo) * 0.04 || 1;
  judging.range = [lo - pad, hi + pad];
  for (const input of [$("threshold")]) {
    input.min = String(judging.range[0]);
    input.max = String(judging.range[1]);
  }
  setThreshold(judging.a.threshold);
}

function setThreshold(t) {
  if (!judging.a || !Number.isFinite(t)) return;
  judging.threshold = t;
  $("threshold").value = String(t);
  $("threshold-value").value = t.toFixed(3);
  drawHistogram();
  renderJudged();
  clearTimeout(judging.timer);  // the service counts the rates (and their intervals)
  judging.timer = setTimeout(guarded(loadRates), 120);
}

async function loadRates() {
  const t = judging.threshold;
  const url = (v) => `/v1/studio/products/${enc(state.product)}/versions/${v}/rates?threshold=${t}`;
  const [ra, rb] = await Promise.all([
    apiJson(url(judging.a.version)), judging.b ? apiJson(url(judging.b.version)) : null,
  ]);
  if (t !== judging.threshold) return;  // moved on meanwhile
  const line = (name, r) => `${name}: false alarms ${pct(r.false_alarms)} (95 % ` +
    `${interval(r.false_alarms)}) · defects caught ${pct(r.caught)} (95 % ${interval(r.caught)})`;
  $("rates").replaceChildren(el("div", line(`v${judging.a.version}`, ra)),
    ...(rb ? [el("div", line(`v${judging.b.version}`, rb))] : []));
  $("rates").dataset.threshold = String(t);
  $("rates").dataset.falseAlarms = String(ra.false_alarms ? ra.false_alarms.count : 0);
  $("rates").dataset.caught = String(ra.caught ? ra.caught.count : 0);
  $("per-type").replaceChildren(...Object.entries(ra.per_type).map(([type, r]) => {
    const tr = el("tr");
    tr.append(el("td", type), el("td", pct(r)), el("td", interval(r)));
    return tr;
  }));
}

function drawHistogram() {
  const canvas = $("histogram");
  const ctx = canvas.getContext("2d");
  const [lo, hi] = judging.range;
  const W = canvas.width;
  const H = canvas.height - 16;
  const bins = 48;
  const x = (s) => ((s - lo) / (hi - lo)) * W;
  const counts = { good: new Array(bins).fill(0), defect: new Array(bins).fill(0) };
  for (const i of judging.a.images) {
    const b = Math.min(bins - 1, Math.max(0, Math.floor(((i.score - lo) / (hi - lo)) * bins)));
    counts[i.kind][b] += 1;
  }
  const top = Math.max(1, ...counts.good, ...counts.defect);
  ctx.clearRect(0, 0, W, canvas.height);
  ctx.globalAlpha = 0.6;
  for (const kind of ["good", "defect"]) {
    ctx.fillStyle = COLOURS[kind];
    counts[kind].forEach((n, b) => {
      const h = (n / top) * (H - 4);
      ctx.fillRect((b * W) / bins + 1, H - h, W / bins - 2, h);
    });
  }
  ctx.globalAlpha = 1;
  ctx.font = "11px system-ui, sans-serif";
  for (const [name, t] of Object.entries(judging.a.operating_points)) {
    ctx.strokeStyle = COLOURS.point;
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(x(t), 0);
    ctx.lineTo(x(t), H);
    ctx.stroke();
    ctx.fillStyle = COLOURS.point;
    ctx.fillText(name, x(t) + 2, 10);
  }
  ctx.setLineDash([]);
  ctx.strokeStyle = COLOURS.threshold;
  ctx.lineWidth = 2;
  ctx.beginPath();
  ctx.moveTo(x(judging.threshold), 0);
  ctx.lineTo(x(judging.threshold), H);
  ctx.stroke();
  ctx.lineWidth = 1;
  ctx.fillStyle = "#333";
  ctx.fillText(`good (green) / defective (orange) · threshold ${judging.threshold.toFixed(2)}`, 4, H + 13);
}

function mistake(image, t) {
  if (image.kind === "good" && image.score > t) return "FALSE ALARM";
  if (image.kind === "defect" && image.score <= t) return "MISSED";
  return "";
}

function renderJudged() {
  const t = judging.threshold;
  const other = judging.b ? new Map(judging.b.images.map((i) => [i.id, i])) : null;
  const sorted = judging.a.images.slice().sort((p, q) =>
    (mistake(q, t) ? 1 : 0) - (mistake(p, t) ? 1 : 0) || q.score - p.score);
  const rows = sorted.map((image) => {
    const row = el("button", null, "judged-row");
    row.type = "button";
    row.dataset.image = String(image.id);
    row.dataset.mistake = mistake(image, t);
    const wrong = mistake(image, t);
    const b = other && other.get(image.id);
    row.append(
      el("span", wrong || "ok", wrong ? "bad" : "ok"),
      el("span", image.name, "name"),
      el("span", image.kind === "defect" ? image.defect_type : "good"),
      el("span", `v${judging.a.version} ${image.score.toFixed(1)}`),
      ...(b ? [el("span", `v${judging.b.version} ${b.score.toFixed(1)}${mistake(b, t) ? " ✗" : ""}`)] : []),
    );
    row.addEventListener("click", guarded(() => look(image)));
    return row;
  });
  $("judged").replaceChildren(...rows);
}

async function look(image) {
  const t = judging.threshold;
  const versions = [judging.a.version, ...(judging.b ? [judging.b.version] : [])];
  const views = await Promise.all(versions.map((v) =>
    apiJson(`/v1/studio/products/${enc(state.product)}/versions/${v}/heatmap/${image.id}?threshold=${t}`)));
  const figures = views.map((view, k) => {
    const fig = el("figure", null, "heat");
    const img = el("img");
    img.src = `data:image/png;base64,${view.overlay}`;
    img.alt = `heat map of ${image.name} by version ${versions[k]}`;
    fig.append(img, el("figcaption", `v${versions[k]}: ${view.verdict}, score ` +
      `${view.score.toFixed(1)}, ${view.regions.length} region(s)`));
    return fig;
  });
  const head = el("p", `${image.name} (${image.kind === "defect" ? image.defect_type : "good"})`);
  $("look").replaceChildren(head, ...figures);
  $("look").dataset.image = String(image.id);
}

async function judgeVersion() {
  const version = $("judge-version").value;
  const job = await postJson(`/v1/studio/products/${enc(state.product)}/versions/${version}/judge`, {});
  const done = await followJob(job, (j) => say(`judging v${version}: ${j.done} of ${j.total ?? "?"} images`));
  if (done.state !== "done") throw new Error(done.error || done.state);
  say(`v${version} judged`);
  await loadEvaluations();
}

async function setOperatingPoint() {
  const t = judging.threshold;
  const v = judging.a.version;
  if (!window.confirm(`Make a version of v${v} at threshold ${t.toFixed(3)}? (promote it from Versions)`)) return;
  const made = await postJson(`/v1/studio/products/${enc(state.product)}/versions/${v}/operating-point`,
    { threshold: t });
  say(`version ${made.version}: v${v} at threshold ${t.toFixed(3)}; promote it from Versions (5)`);
  await loadJudge(String(made.version));
}
