// padim studio, page 2: training. What each geometry costs (model input, tiles, positions,
// file size, memory and time, measured on the server), then a fit in the background with its
// stage, progress and time left, and a cancel button.
"use strict";

const training = { offers: [], job: null };

function startTrain() {
  $("propose").addEventListener("click", guarded(propose));
  $("train").addEventListener("click", guarded(train));
  $("cancel").addEventListener("click", guarded(cancelJob));
  $("align").replaceChildren(...["none", "translation", "rigid", "similarity", "homography"]
    .map((a) => new Option(a === "none" ? "none (parts always in place)" : a, a)));
}

async function loadTrain() {
  const { jobs } = await apiJson(`/v1/studio/jobs?product=${enc(state.product)}`);
  $("jobs").replaceChildren(...jobs.slice(0, 10).map((j) => el("li", jobLine(j))));
  const running = jobs.find((j) => j.state === "running");
  if (running && !training.job) followJob(running, showJob).then(trained).catch(() => {});
}

function jobLine(j) {
  const what = j.state === "done" && j.result && j.result.version ? ` → version ${j.result.version}` : "";
  return `#${j.id} ${j.kind} by ${j.actor}: ${j.state}${what} (${j.elapsed_s} s)` +
    (j.error ? `: ${j.error}` : "");
}

async function propose() {
  say("measuring what a fit costs on this server…");
  const p = await apiJson(`/v1/studio/products/${enc(state.product)}/proposal?align=${$("align").value}`);
  training.offers = p.geometries;
  const rows = p.geometries.map((g, i) => {
    const tr = el("tr");
    const pick = el("input");
    pick.type = "radio";
    pick.name = "geometry";
    pick.value = g.geometry;
    pick.checked = i === 0;
    pick.setAttribute("aria-label", g.geometry);
    const first = el("td");
    first.append(pick);
    const tiles = g.tiling ? `${g.tiling.tiles[0]}×${g.tiling.tiles[1]} of ${g.tiling.tile[0]}` : "–";
    tr.append(first, el("td", g.geometry), el("td", `${g.input[0]}×${g.input[1]}`), el("td", tiles),
      el("td", g.positions.toLocaleString()), el("td", mb(g.model_file_bytes)),
      el("td", mb(g.fit_memory_bytes)), el("td", `≈ ${Math.ceil(g.seconds.total)} s`));
    return tr;
  });
  $("proposal").replaceChildren(...rows);
  $("proposal-note").textContent = `${p.images} good training images, mostly ${p.image_size[0]}×` +
    `${p.image_size[1]} (${p.sizes} size${p.sizes > 1 ? "s" : ""}); this server has ` +
    `${p.available_bytes ? mb(p.available_bytes) : "?"} free. Standard keeps the images' ` +
    "aspect at about 256×256 pixels; detail, offered for large images, keeps half their " +
    "resolution in tiles so small defects stay several patches wide.";
  $("train").disabled = false;
  say("");
}

async function train() {
  const chosen = document.querySelector("input[name=geometry]:checked");
  const geometry = chosen ? chosen.value : "standard";
  const offer = training.offers.find((g) => g.geometry === geometry);
  const estimate = offer ? offer.seconds.total : null;
  if (!window.confirm(`Train ${state.product} (${geometry} geometry, about ${Math.ceil(estimate || 0)} s)?`)) return;
  const job = await postJson(`/v1/studio/products/${enc(state.product)}/train`,
    { geometry, align: $("align").value, estimate_s: estimate });
  await trained(await followJob(job, showJob));
}

async function trained(job) {
  training.job = null;
  $("cancel").hidden = true;
  if (job.state === "done") {
    say(`version ${job.result.version} trained and judged: open Judge (3)`);
    $("job").dataset.version = String(job.result.version);
  } else {
    say(`training ${job.state}${job.error ? `: ${job.error}` : ""}`, job.state === "failed");
  }
  $("job").dataset.state = job.state;
  await loadTrain();
}

function showJob(j) {
  training.job = j;
  $("job").hidden = false;
  $("job").dataset.state = j.state;
  $("cancel").hidden = j.state !== "running";
  const stage = { reading: "reading the images", fit: "features of the images",
    factorise: "fitting the Gaussians", registering: "saving the version",
    judging: "judging it on the test images", capturing: "capturing frames" }[j.stage] || j.stage;
  const unit = j.stage === "factorise" ? "positions" : "images";
  const count = j.total ? ` ${j.done} of ${j.total} ${unit}` : "";
  const left = j.stage_left_s !== null ? `, about ${Math.ceil(j.stage_left_s)} s left in this stage` : "";
  $("job-text").textContent = `${stage}:${count} (${j.elapsed_s} s${left}` +
    (j.estimate_s ? `; estimated ${Math.ceil(j.estimate_s)} s in all)` : ")");
  $("job-bar").value = j.total ? j.done / j.total : 0;
}

async function followJob(job, show) {
  for (;;) {
    show(job);
    if (job.state !== "running") return job;
    await new Promise((ok) => setTimeout(ok, 700));
    job = await apiJson(`/v1/studio/jobs/${job.id}`);
  }
}

async function cancelJob() {
  if (!training.job || !window.confirm("Cancel the running job? Nothing it made is kept.")) return;
  await postJson(`/v1/studio/jobs/${training.job.id}/cancel`, {});
}
