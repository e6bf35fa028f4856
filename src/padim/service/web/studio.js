// padim studio: the shell (products, pages), a product's versions (promote, roll back, retrain
// with its gate), the line's recent results as a review queue, and the audit trail. The
// images, train and judge pages are in studio_*.js. Every string from the service is set as
// text (textContent), never as HTML; every change asks for confirmation first.
"use strict";

const $ = (id) => document.getElementById(id);
// sent: the files this page sent through the line, by record id (a good verdict's image is
// rarely kept: a missed defect among them is sent back with its file)
const state = { product: null, busy: false, urls: [], page: "images", sent: new Map() };
const enc = encodeURIComponent;
const PAGES = {  // what each page loads when it is shown (the other scripts fill it in)
  images: () => loadImages(),
  train: () => loadTrain(),
  judge: () => loadJudge(),
  line: () => Promise.all([loadQueue(), loadDrift()]),
  versions: () => Promise.all([loadVersions(), loadEvents()]),
};

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function mb(bytes) {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GB` : `${Math.round(bytes / 2 ** 20)} MB`;
}

function pct(r) {
  if (!r) return "–";
  return `${r.count}/${r.of} = ${(100 * r.rate).toFixed(1)} %`;
}

function interval(r) {
  return r ? `${(100 * r.ci95[0]).toFixed(1)}–${(100 * r.ci95[1]).toFixed(1)} %` : "";
}

// Pictures behind a token cannot be <img src=URL>: fetched with it, shown from blob: URLs,
// a few at a time (the page is ready before they all arrive).
const pictures = { running: 0, waiting: [] };
function picture(url, img) {
  return new Promise((resolve) => {
    pictures.waiting.push({ url, img, resolve });
    pump();
  });
}
function pump() {
  while (pictures.running < 6 && pictures.waiting.length) {
    const job = pictures.waiting.shift();
    pictures.running += 1;
    api(job.url).then(async (res) => {
      if (res.ok && job.img.isConnected !== false) {
        const url = URL.createObjectURL(await res.blob());
        state.urls.push(url);
        job.img.src = url;
      }
    }).catch(() => {}).finally(() => {
      pictures.running -= 1;
      job.resolve();
      pump();
    });
  }
}

function say(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

async function loadProducts(wanted) {
  const { products } = await apiJson("/v1/products");
  const picker = $("product");
  picker.replaceChildren(...products.map((p) => new Option(p.product, p.product)));
  if (!products.length) {
    say("no products yet: make one with 'New product…'");
    return;
  }
  const [hashProduct, hashPage] = location.hash.slice(1).split("/").map(decodeURIComponent);
  wanted = wanted || hashProduct;
  if (PAGES[hashPage]) state.page = hashPage;
  await show(products.some((p) => p.product === wanted) ? wanted : products[0].product);
}

async function show(product) {
  state.product = product;
  $("product").value = product;
  loadDrift().catch(() => {});
  await showPage(state.page);
}

async function showPage(page) {
  state.page = page;
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.tab === page));
  }
  for (const main of document.querySelectorAll("main.page")) main.hidden = main.dataset.page !== page;
  history.replaceState(null, "", `#${enc(state.product || "")}/${page}`);
  if (state.product) await PAGES[page]();
}

async function newProduct() {
  const name = window.prompt("Name of the new product (letters, digits, - _ .):");
  if (!name) return;
  try {
    await postJson("/v1/studio/products", { product: name.trim() });
    say(`product ${name.trim()} made: add its good images`);
    state.page = "images";
    await loadProducts(name.trim());
  } catch (err) {
    say(`new product: ${err.message}`, true);
  }
}

function gateText(evaluation) {
  const gate = evaluation && evaluation.gate;
  if (!gate) return ["–", ""];
  return gate.passed ? ["passed", "gate-ok"] : ["FAILED", "gate-fail"];
}

async function loadVersions() {
  const p = state.product;
  const { versions, aliases } = await apiJson(`/v1/products/${enc(p)}/versions`);
  const byVersion = {};
  for (const [alias, n] of Object.entries(aliases)) (byVersion[n] ||= []).push(alias);
  const rows = versions.slice().reverse().map((v) => {
    const tr = document.createElement("tr");
    tr.dataset.version = String(v.version);
    const names = document.createElement("td");
    for (const alias of byVersion[v.version] || []) {
      const tag = document.createElement("span");
      tag.className = "alias";
      tag.textContent = alias;
      names.append(tag);
    }
    const threshold = v.operating_points && v.operating_points.threshold;
    const [gate, gateClass] = gateText(v.evaluation);
    const promote = document.createElement("button");
    promote.type = "button";
    promote.textContent = "Promote";
    promote.dataset.testid = "promote";
    promote.hidden = (byVersion[v.version] || []).includes("production");
    promote.addEventListener("click", () => promoteVersion(v.version));
    const actions = document.createElement("td");
    actions.append(promote);
    tr.append(
      cell(`v${v.version}`), names, cell(v.parent ? `v${v.parent}` : "–"),
      cell(String(v.n_train ?? "?")), cell(threshold ? threshold.toFixed(2) : "–"),
      cell(gate, gateClass), cell(v.note || "", "note"), actions,
    );
    return tr;
  });
  $("versions").replaceChildren(...rows);
}

async function change(what, url, payload) {
  if (state.busy) return null;
  state.busy = true;
  try {
    return await postJson(url, payload);
  } catch (err) {
    say(`${what}: ${err.message}`, true);
    return null;
  } finally {
    state.busy = false;
  }
}

async function promoteVersion(version) {
  const p = state.product;
  if (!window.confirm(`Promote ${p} version ${version} to production?`)) return;
  let done = await change("promote", `/v1/products/${enc(p)}/promote`, { version });
  if (!done && $("status").textContent.includes("failed its gate")) {
    const reason = window.prompt(
      `Version ${version} failed its gate. To promote it anyway, say why (kept in the audit trail):`,
    );
    if (!reason) return;
    done = await change("promote", `/v1/products/${enc(p)}/promote`, { version, override: reason });
  }
  if (done) say(`${p}: production is version ${done.version}`);
  await Promise.all([loadVersions(), loadEvents()]);
}

async function rollback() {
  const p = state.product;
  if (!window.confirm(`Roll ${p}'s production back to its previous version?`)) return;
  const done = await change("roll back", `/v1/products/${enc(p)}/rollback`, {});
  if (done) say(`${p}: production rolled back to version ${done.version}`);
  await Promise.all([loadVersions(), loadEvents()]);
}

async function retrain() {
  const p = state.product;
  if (!window.confirm(`Retrain ${p} from its operators' false alarms? (a minute or more)`)) return;
  const job = await change("retrain", `/v1/studio/products/${enc(p)}/retrain`, {});
  if (!job) return;
  const stages = { loading: "loading production", update: "adding the false alarms",
    factorise: "refitting the Gaussians", gate: "scoring every labelled image",
    registering: "saving the candidate" };
  const finished = await followJob(job, (j) => say(`retraining ${p}: ` +
    `${stages[j.stage] || j.stage}${j.total ? ` (${j.done} of ${j.total})` : ""}, ${j.elapsed_s} s`));
  if (finished.state !== "done") {
    say(`retrain: ${finished.error || finished.state}`, true);
    return;
  }
  const done = finished.result;
  const box = $("gate");
  box.hidden = false;
  const head = document.createElement("p");
  head.textContent =
    `Version ${done.version} (candidate) = version ${done.base} + ${done.added_false_alarms} ` +
    `false alarm(s). Defects caught: production ${done.production.defects_caught}, candidate ` +
    `${done.candidate.defects_caught} of ${done.labelled.defects}. Gate for production: ` +
    (done.gate.passed ? "passed" : "FAILED");
  head.className = done.gate.passed ? "gate-ok" : "gate-fail";
  const list = document.createElement("ul");
  for (const check of done.gate.checks) {
    const li = document.createElement("li");
    li.textContent = `${check.passed ? "pass" : "FAIL"}: ${check.check}`;
    list.append(li);
  }
  box.replaceChildren(head, list);
  box.dataset.passed = String(done.gate.passed);
  say(`${p}: candidate version ${done.version} ready; promote it from the table`);
  await Promise.all([loadVersions(), loadEvents()]);
}

async function label(record, node, labelName) {
  const form = new FormData();
  form.append("label", labelName);
  if (labelName === "missed_defect") {  // the image goes along (the service checks it)
    const sent = state.sent.get(record.id);
    const res = sent ? null : await api(`/v1/records/${record.id}/image`);
    if (sent) form.append("image", sent, record.name);
    else if (res.ok) form.append("image", await res.blob(), record.name);
  }
  const said = node.querySelector(".said");
  try {
    const done = await apiJson(`/v1/records/${record.id}/feedback`, { method: "POST", body: form });
    said.textContent = `${done.label.replace("_", " ")} (${done.author})`;
    node.dataset.feedback = done.label;
    await loadEvents();
  } catch (err) {
    said.textContent = `not saved: ${err.message}`;
  }
}

async function sendToLine(files) {
  const p = state.product;
  let done = 0;
  const said = $("line-said");
  for (const file of files) {
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const r = await apiJson(`/v1/models/${enc(p)}/predict`, { method: "POST", body: form });
      if (r.record_id !== undefined) state.sent.set(r.record_id, file);
      done += 1;
      said.textContent = `${done}/${files.length}: ${file.name} ${r.verdict} (score ` +
        `${r.score.toFixed(1)}, v${r.model_version ?? "?"})`;
    } catch (err) {
      said.textContent = `${file.name}: ${err.message}`;
      break;
    }
  }
  await Promise.all([loadQueue(), loadDrift()]);
}

async function loadQueue() {
  const p = state.product;
  const { records } = await apiJson(`/v1/records?product=${enc(p)}&limit=60`);
  releasePictures();
  const items = await Promise.all(records.map(async (r) => {
    const node = $("item").content.firstElementChild.cloneNode(true);
    node.dataset.record = String(r.id);
    node.dataset.verdict = r.verdict;
    const verdict = node.querySelector(".verdict");
    verdict.textContent = r.verdict.toUpperCase();
    verdict.className = `verdict ${r.verdict === "good" ? "v-good" : "v-bad"}`;
    node.querySelector(".meta").textContent =
      `#${r.id} · v${r.version ?? "?"} · score ${r.score.toFixed(1)} · ${r.name}`;
    const img = node.querySelector("img");
    img.alt = r.name;
    const sent = state.sent.get(r.id);
    if (r.image) picture(`/v1/records/${r.id}/image`, img);
    else if (sent) {
      img.src = URL.createObjectURL(sent);
      state.urls.push(img.src);
    }
    else img.replaceWith(el("div", "image not kept (good verdict)", "no-image"));
    for (const btn of node.querySelectorAll("button")) {
      // flagged: false alarm or confirmed; judged good: missed, when its image is at hand
      const forGood = btn.dataset.label === "missed_defect";
      btn.hidden = r.verdict === "good" ? !forGood || !(r.image || sent) : forGood;
      btn.addEventListener("click", () => label(r, node, btn.dataset.label));
    }
    if (r.feedback) {
      node.querySelector(".said").textContent = r.feedback.replace("_", " ");
      node.dataset.feedback = r.feedback;
    }
    return node;
  }));
  $("queue").replaceChildren(...items);
}

async function loadEvents() {
  const { events } = await apiJson(`/v1/events?product=${enc(state.product)}&limit=30`);
  const items = events.reverse().map((e) => {
    const li = document.createElement("li");
    const d = e.detail || {};
    const to = d.alias ? ` → ${d.alias}` : "";
    const what = d.version !== undefined ? ` v${d.version}${to}` : d.label ? ` ${d.label}`
      : d.count ? ` ${d.count} ${d.kind}` : "";
    li.textContent = `${e.at.slice(0, 19).replace("T", " ")} ${e.actor}: ${e.action}${what}` +
      (d.override ? ` (override: ${d.override})` : "");
    return li;
  });
  $("events").replaceChildren(...items);
}

async function loadDrift() {
  const health = await apiJson("/v1/health");
  const d = (health.drift || {})[state.product];
  const el = $("drift");
  el.classList.toggle("alarm", Boolean(d && d.state === "drift"));
  el.textContent = !d ? "line: no results yet" :
    d.state === "drift"
      ? `LINE DRIFTED: median score ${d.window_median} of the last ${d.window} above ${d.reference_upper}`
      : `line: ${d.state} (median score ${d.window_median ?? "–"}, alarm above ${d.reference_upper})`;
}

function releasePictures() {
  for (const url of state.urls.splice(0)) URL.revokeObjectURL(url);
  pictures.waiting.length = 0;
}

function guarded(work) {  // a handler whose failure is said, not thrown
  return (...args) => Promise.resolve(work(...args)).catch((err) => say(err.message, true));
}

async function start() {
  $("product").addEventListener("change", guarded((e) => show(e.target.value)));
  $("new-product").addEventListener("click", guarded(newProduct));
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", guarded(() => showPage(tab.dataset.tab)));
  }
  document.addEventListener("keydown", (e) => {  // Alt+1..5: the pages
    const page = Object.keys(PAGES)[Number(e.key) - 1];
    if (e.altKey && page) guarded(() => showPage(page))();
  });
  $("rollback").addEventListener("click", guarded(rollback));
  $("retrain").addEventListener("click", guarded(retrain));
  $("line-files").addEventListener("change", guarded((e) => sendToLine([...e.target.files])));
  startImages();
  startTrain();
  startJudge();
  try {
    await loadProducts();  // first, alone: a token is asked for once
    if (state.product) await loadDrift();
  } catch (err) {
    say(err.message, true);
  }
  document.body.dataset.ready = "true";
  setInterval(() => {
    if (state.product && !state.busy && state.page === "line") {
      Promise.all([loadQueue(), loadDrift()]).catch((err) => say(err.message, true));
    }
  }, 5000);
}

start();
