// Pennello's web page: talks only to this daemon's API. No libraries, nothing from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
// This run's page secret, present when the page was served to this computer: it shows the daemon
// that a request comes from its own page and not from another site's.
const PAGE_TOKEN = document.querySelector('meta[name="pennello-page"]')?.content || "";

async function api(path, options = {}) {
  const init = { credentials: "same-origin", ...options };
  init.headers = PAGE_TOKEN ? { "X-Pennello-Page": PAGE_TOKEN } : {};
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, init);
  const body = response.headers.get("Content-Type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const message = body?.error?.message || `${response.status} ${response.statusText}`;
    throw Object.assign(new Error(message), { status: response.status });
  }
  return body;
}

function show(id, visible = true) { $(id).hidden = !visible; }

function imageElement(image, label) {
  const img = document.createElement("img");
  img.src = image.url || `/api/images/${image.id}`;
  img.alt = label;
  img.title = label;
  img.loading = "lazy";
  if (image.copyright && image.copyright.flagged) {  // the copyright check flags, never hides
    const names = image.copyright.matches.map((match) => match.reference).join(", ");
    img.classList.add("flagged");
    img.title = `${label}\nCopyright check: resembles ${names}`;
  }
  return img;
}

// --- who am I: owner, paired device, or a device that must pair first -------------------------

async function start() {
  const status = await api("/api/pair/status");
  if (!status.paired) {
    $("who").textContent = "This device is not paired yet.";
    const code = new URLSearchParams(location.search).get("pair");
    if (code) $("pair-code").value = code;
    $("pair-name").value = navigator.platform ? `browser on ${navigator.platform}` : "browser";
    show("pair-section");
    return;
  }
  $("who").textContent = status.owner
    ? `This computer (owner)${status.lan ? " · other devices on the network may pair" : " · local only"}`
    : `Paired as “${status.device.name}”`;
  show("pair-section", false);
  show("generate-section");
  show("gallery-section");
  show("devices-section", status.owner);
  await Promise.all([loadModels(), loadGallery()]);
}

$("pair-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("pair-error").textContent = "";
  try {
    await api("/api/pair", { json: { code: $("pair-code").value, name: $("pair-name").value, cookie: true } });
    history.replaceState(null, "", "/");
    await start();
  } catch (error) {
    $("pair-error").textContent = error.message;
  }
});

// --- generating -----------------------------------------------------------------------------

async function loadModels() {
  const { models } = await api("/api/models");
  const select = $("model");
  select.replaceChildren(...models.map((model) => {
    const option = new Option(model.name, model.name, model.default, model.default);
    option.dataset.defaults = JSON.stringify(model.defaults || {});
    return option;
  }));
  select.addEventListener("change", applyDefaults);
  applyDefaults();
}

function applyDefaults() {
  const option = $("model").selectedOptions[0];
  const defaults = option ? JSON.parse(option.dataset.defaults) : {};
  for (const name of ["width", "height", "steps"]) {
    if (defaults[name] !== undefined) $(name).value = defaults[name];
  }
}

function readForm() {
  const request = { prompt: $("prompt").value };
  if ($("model").value) request.model = $("model").value;
  for (const name of ["width", "height", "steps", "seed"]) {
    if ($(name).value !== "") request[name] = Number($(name).value);
  }
  return request;
}

function setBusy(busy, text = "") {
  $("generate").disabled = busy;
  show("progress", busy);
  $("status-text").textContent = text;
}

$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("generate-error").textContent = "";
  setBusy(true, "Queued…");
  $("progress").value = 0;
  try {
    const job = await api("/api/generate", { json: readForm() });
    follow(job);
  } catch (error) {
    setBusy(false);
    $("generate-error").textContent = error.message;
  }
});

function follow(job) {
  const events = new EventSource(`/api/jobs/${job.id}/events`);
  const finish = (text) => { events.close(); setBusy(false, text); };
  events.addEventListener("progress", (event) => {
    const data = JSON.parse(event.data);
    $("progress").value = data.progress;
    $("status-text").textContent = `Step ${data.step} of ${data.total_steps}`;
  });
  events.addEventListener("done", (event) => {
    const done = JSON.parse(event.data);
    finish(`Done in ${(done.finished - done.created).toFixed(1)} s`);
    $("result").replaceChildren(...done.images.map((image) => imageElement(image, `${done.prompt} (seed ${image.seed})`)));
    loadGallery();
  });
  events.addEventListener("failed", (event) => {
    finish("");
    $("generate-error").textContent = `Failed: ${JSON.parse(event.data).error}`;
  });
  events.addEventListener("cancelled", () => finish("Cancelled"));
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) finish("Lost the connection to the daemon");
  };
}

// --- gallery ----------------------------------------------------------------------------------

async function loadGallery() {
  const { images } = await api("/api/outputs?limit=24");
  $("gallery").replaceChildren(...images.map((record) => imageElement(record, record.prompt || record.id)));
}

// --- pairing other devices (owner only) ---------------------------------------------------------

let expiryTimer = null;

$("new-code").addEventListener("click", async () => {
  const offer = await api("/api/pair/code", { method: "POST" });
  $("code").textContent = offer.code;
  $("pair-url").textContent = offer.pair_url;
  $("qr").src = `${offer.qr_png_url}?code=${offer.code}`;
  show("code-box");
  const deadline = Date.now() + offer.expires_in_s * 1000;
  clearInterval(expiryTimer);
  const tick = () => {
    const left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
    $("code-expiry").textContent = left ? `(valid for ${left} s)` : "(expired)";
    if (!left) clearInterval(expiryTimer);
  };
  tick();
  expiryTimer = setInterval(tick, 1000);
});

start().catch((error) => { $("who").textContent = `Cannot reach the daemon: ${error.message}`; });
