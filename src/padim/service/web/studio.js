// padim studio: a product's versions (promote, roll back, retrain with its gate), the line's
// recent results as a review queue, and the audit trail. Every string from the service is
// set as text (textContent), never as HTML; every change asks for confirmation first.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { product: null, busy: false, urls: [] };
const enc = encodeURIComponent;

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

async function loadProducts() {
  const { products } = await apiJson("/v1/products");
  const picker = $("product");
  picker.replaceChildren(...products.map((p) => new Option(p.product, p.product)));
  if (!products.length) {
    say("no products in the registry yet: register a model ('padim registry register')");
    return;
  }
  const wanted = decodeURIComponent(location.hash.slice(1));
  await show(products.some((p) => p.product === wanted) ? wanted : products[0].product);
}

async function show(product) {
  state.product = product;
  $("product").value = product;
  history.replaceState(null, "", `#${enc(product)}`);
  await Promise.all([loadVersions(), loadQueue(), loadEvents(), loadDrift()]);
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
  say(`retraining ${p}: updating the model and scoring every labelled image…`);
  const done = await change("retrain", `/v1/products/${enc(p)}/retrain`, {});
  if (!done) return;
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

async function imageOf(record) {
  const res = await api(`/v1/records/${record.id}/image`);
  if (!res.ok) return null;
  const url = URL.createObjectURL(await res.blob());
  state.urls.push(url);
  return url;
}

async function label(record, node, labelName) {
  const form = new FormData();
  form.append("label", labelName);
  if (labelName === "missed_defect") {  // the kept image goes along (the service checks it)
    const res = await api(`/v1/records/${record.id}/image`);
    if (res.ok) form.append("image", await res.blob(), record.name);
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

async function loadQueue() {
  const p = state.product;
  const { records } = await apiJson(`/v1/records?product=${enc(p)}&limit=60`);
  for (const url of state.urls.splice(0)) URL.revokeObjectURL(url);
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
    if (r.image) img.src = (await imageOf(r)) || "";
    for (const btn of node.querySelectorAll("button")) {
      // flagged: false alarm or confirmed; judged good: missed, when its image was kept
      const forGood = btn.dataset.label === "missed_defect";
      btn.hidden = r.verdict === "good" ? !forGood || !r.image : forGood;
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
    const what = d.version !== undefined ? ` v${d.version}${to}` : d.label ? ` ${d.label}` : "";
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

async function start() {
  $("product").addEventListener("change", (e) => show(e.target.value).catch((err) => say(err.message, true)));
  $("rollback").addEventListener("click", rollback);
  $("retrain").addEventListener("click", retrain);
  try {
    await loadProducts();  // first, alone: a token is asked for once
  } catch (err) {
    say(err.message, true);
  }
  document.body.dataset.ready = "true";
  setInterval(() => {
    if (state.product && !state.busy) {
      Promise.all([loadQueue(), loadDrift()]).catch((err) => say(err.message, true));
    }
  }, 5000);
}

start();
