// padim studio, page 1: a product's images. Counts, sizes and near-duplicates; good or
// defective images added by drag and drop (files or a whole folder), from a server folder or
// a camera; the images as thumbnails, a page at a time; a defect's mask drawn on a canvas.
"use strict";

const IMAGES_PAGE = 60;  // thumbnails per page (two screens at 1366x768)
const UPLOAD_BATCH = 8;  // images per request (the service takes up to --max-batch-images)
const gallery = { offset: 0, drawing: null };

function startImages() {
  $("kind").addEventListener("change", () => { $("type-label").hidden = $("kind").value !== "defect"; });
  $("files").addEventListener("change", guarded((e) => upload([...e.target.files])));
  $("folder").addEventListener("change", guarded((e) => upload([...e.target.files])));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", guarded(async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    await upload(await droppedFiles(e.dataTransfer));
  }));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter") $("files").click(); });
  $("filter").addEventListener("change", guarded(() => loadGrid(true)));
  $("more").addEventListener("click", guarded(() => loadGrid(false)));
  $("import").addEventListener("click", guarded(importFolder));
  $("capture").addEventListener("click", guarded(capture));
  startMasks();
}

async function loadImages() {
  const p = state.product;
  const s = await apiJson(`/v1/studio/products/${enc(p)}`);
  const c = s.counts;
  const rows = [
    ["good, to train on", c.good_train], ["good, kept apart to judge with", c.good_test],
    ["defective", `${c.defect} (${s.masks} with a mask)`],
    ["sizes", s.sizes.map((x) => `${x.width}×${x.height} (${x.count})`).join(", ") || "–"],
    ["defect types", Object.entries(s.defect_types).map(([t, n]) => `${t} (${n})`).join(", ") || "–"],
    ["on disk", mb(s.bytes)],
  ];
  $("image-summary").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  $("image-summary").dataset.goodTrain = String(c.good_train);
  $("image-summary").dataset.defects = String(c.defect);
  const shown = await loadGrid(true);
  // after the thumbnails: comparing every pair of images takes the server a moment
  Promise.all(shown).then(() => apiJson(`/v1/studio/products/${enc(p)}/near-duplicates`))
    .then(({ groups }) => {
    const n = groups.reduce((a, g) => a + g.length, 0);
    $("near-duplicates").textContent = groups.length
      ? `${n} images are near-duplicates of another (${groups.length} groups of the same view: ` +
        "a test image that copies a training one flatters the results)"
      : "no near-duplicates";
  }).catch(() => {});
}

async function loadGrid(fresh) {
  const p = state.product;
  if (fresh) {
    gallery.offset = 0;
    $("grid").replaceChildren();
    releasePictures();
  }
  const kind = $("filter").value;
  const url = `/v1/studio/products/${enc(p)}/images?limit=${IMAGES_PAGE}&offset=${gallery.offset}` +
    (kind ? `&kind=${kind}` : "");
  const { images } = await apiJson(url);
  gallery.offset += images.length;
  const tiles = images.map(tile);
  $("grid").append(...tiles.map((t) => t.node));
  $("more").hidden = images.length < IMAGES_PAGE;
  $("shown").textContent = `${gallery.offset} shown`;
  return tiles.map((t) => t.shown);
}

function tile(image) {
  const fig = el("figure", null, `tile ${image.kind}`);
  fig.dataset.image = String(image.id);
  const img = el("img");
  img.alt = image.name;
  img.width = 120;
  img.height = 90;
  const shown = picture(`/v1/studio/images/${image.id}/thumb`, img);
  const caption = el("figcaption", image.kind === "defect"
    ? `${image.defect_type}${image.mask ? " · mask" : ""}` : image.split);
  fig.append(img, caption);
  if (image.kind === "defect") {
    const draw = el("button", image.mask ? "Redraw mask" : "Draw mask");
    draw.type = "button";
    draw.dataset.testid = "draw-mask";
    draw.addEventListener("click", guarded(() => openMask(image)));
    fig.append(draw);
  }
  return { node: fig, shown };
}

// Every file of a drop: folders are walked (webkitGetAsEntry), other items taken as files.
async function droppedFiles(transfer) {
  const entries = [...transfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry());
  if (!entries.some((e) => e && e.isDirectory)) return [...transfer.files];
  const files = [];
  async function walk(entry) {
    if (entry.isFile) {
      files.push(await new Promise((ok, no) => entry.file(ok, no)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, no) => reader.readEntries(ok, no));
        if (!batch.length) break;
        for (const child of batch) await walk(child);
      }
    }
  }
  for (const entry of entries) if (entry) await walk(entry);
  return files;
}

async function upload(files) {
  files = files.filter((f) => /\.(png|jpe?g|bmp|tiff?)$/i.test(f.name));
  if (!files.length) return say("no image files (png, jpg, bmp, tif) in what was given", true);
  const kind = $("kind").value;
  const type = kind === "defect" ? `&defect_type=${enc($("defect-type").value)}` : "";
  const url = `/v1/studio/products/${enc(state.product)}/images?kind=${kind}${type}`;
  const total = { added: 0, skipped: 0, refused: [] };
  for (let i = 0; i < files.length; i += UPLOAD_BATCH) {
    const form = new FormData();
    for (const f of files.slice(i, i + UPLOAD_BATCH)) form.append("file", f, f.name);
    const r = await apiJson(url, { method: "POST", body: form });
    total.added += r.added.length;
    total.skipped += r.skipped.length;
    total.refused.push(...r.refused);
    say(`uploading: ${Math.min(i + UPLOAD_BATCH, files.length)} of ${files.length} images sent`);
  }
  say(`${total.added} ${kind} images added, ${total.skipped} already there` +
    (total.refused.length ? `, ${total.refused.length} refused: ${total.refused[0].error}` : ""),
  total.refused.length > 0);
  await loadImages();
}

async function importFolder() {
  const folder = $("server-folder").value.trim();
  if (!folder) return;
  const kind = $("kind").value;
  const r = await postJson(`/v1/studio/products/${enc(state.product)}/import`,
    { folder, kind, defect_type: kind === "defect" ? $("defect-type").value : "" });
  say(`${r.added.length} images added from ${folder}, ${r.skipped.length} already there, ` +
    `${r.refused.length} refused`);
  await loadImages();
}

async function capture() {
  const source = $("camera").value.trim();
  if (!source) return;
  const job = await postJson(`/v1/studio/products/${enc(state.product)}/capture`,
    { source, frames: Number($("frames").value), every: Number($("every").value) });
  const done = await followJob(job, (j) => say(`capturing: ${j.done} of ${j.total} frames`));
  if (done.state === "done") say(`${done.result.added.length} frames added from ${source}`);
  await loadImages();
}

// ----------------------------------------------------------------------------- masks

function startMasks() {
  const canvas = $("mask-canvas");
  let down = false;
  const paint = (e) => {
    if (!down || !gallery.drawing) return;
    const box = canvas.getBoundingClientRect();
    const x = ((e.clientX - box.left) / box.width) * canvas.width;
    const y = ((e.clientY - box.top) / box.height) * canvas.height;
    const r = (Number($("brush").value) * canvas.width) / box.width / 2;
    gallery.drawing.mask.beginPath();
    gallery.drawing.mask.arc(x, y, r, 0, 2 * Math.PI);
    gallery.drawing.mask.fill();
    redraw();
  };
  canvas.addEventListener("pointerdown", (e) => { down = true; paint(e); });
  canvas.addEventListener("pointermove", paint);
  window.addEventListener("pointerup", () => { down = false; });
  $("mask-clear").addEventListener("click", () => {
    const d = gallery.drawing;
    if (d) d.mask.clearRect(0, 0, d.maskCanvas.width, d.maskCanvas.height);
    redraw();
  });
  $("mask-close").addEventListener("click", () => $("mask-dialog").close());
  $("mask-save").addEventListener("click", guarded(saveMask));
}

async function openMask(image) {
  const res = await api(`/v1/studio/images/${image.id}/image`);
  if (!res.ok) throw new Error(`the image could not be read (HTTP ${res.status})`);
  const photo = await createImageBitmap(await res.blob());
  const canvas = $("mask-canvas");
  canvas.width = photo.width;
  canvas.height = photo.height;
  const maskCanvas = document.createElement("canvas");
  maskCanvas.width = photo.width;
  maskCanvas.height = photo.height;
  const mask = maskCanvas.getContext("2d");
  mask.fillStyle = "#fff";
  if (image.mask) {
    const old = await api(`/v1/studio/images/${image.id}/mask`);
    if (old.ok) {  // white on black -> white on transparent (what the brush paints)
      mask.drawImage(await createImageBitmap(await old.blob()), 0, 0);
      const data = mask.getImageData(0, 0, photo.width, photo.height);
      for (let i = 0; i < data.data.length; i += 4) {
        data.data[i + 3] = data.data[i];
        data.data[i] = data.data[i + 1] = data.data[i + 2] = 255;
      }
      mask.putImageData(data, 0, 0);
    }
  }
  gallery.drawing = { image, photo, maskCanvas, mask };
  redraw();
  $("mask-dialog").showModal();
}

function redraw() {
  const d = gallery.drawing;
  const ctx = $("mask-canvas").getContext("2d");
  ctx.globalAlpha = 1;
  ctx.drawImage(d.photo, 0, 0);
  ctx.globalAlpha = 0.45;
  ctx.drawImage(tinted(d.maskCanvas), 0, 0);
  ctx.globalAlpha = 1;
}

function tinted(maskCanvas) {  // the mask in red, for the overlay
  const c = document.createElement("canvas");
  c.width = maskCanvas.width;
  c.height = maskCanvas.height;
  const ctx = c.getContext("2d");
  ctx.drawImage(maskCanvas, 0, 0);
  ctx.globalCompositeOperation = "source-in";
  ctx.fillStyle = "#e5484d";
  ctx.fillRect(0, 0, c.width, c.height);
  return c;
}

async function saveMask() {
  const d = gallery.drawing;
  const out = document.createElement("canvas");  // black background, white defect
  out.width = d.maskCanvas.width;
  out.height = d.maskCanvas.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.drawImage(d.maskCanvas, 0, 0);
  const blob = await new Promise((ok) => out.toBlob(ok, "image/png"));
  const form = new FormData();
  form.append("file", blob, "mask.png");
  await apiJson(`/v1/studio/images/${d.image.id}/mask`, { method: "PUT", body: form });
  $("mask-dialog").close();
  say(`mask of ${d.image.name} saved`);
  await loadImages();
}
