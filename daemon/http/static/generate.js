// Generating: the form (prompt, negative prompt, count, size, seed, the Advanced fold), the job's
// live progress with a cancel button, and the pictures it made. With starting pictures the same
// form makes an edit (/api/edit); otherwise text-to-image (/api/generate).

import { $, api, followJob, pictureElement, picturesChanged, show } from "./api.js";
import { matchPreset } from "./models.js";
import { startPreview, stepPreview, stopPreview } from "./preview.js";
import { clearReferences, references } from "./references.js";

let running = null;  // the job being followed
let lastSeed = null;

function numberField(request, id, name = id) {
  if ($(id).value !== "") request[name] = Number($(id).value);
}

function readForm() {
  const request = { prompt: $("prompt").value, n: Number($("n").value || 1) };
  if ($("negative-prompt").value) request.negative_prompt = $("negative-prompt").value;
  if ($("model").value) request.model = $("model").value;
  for (const name of ["width", "height", "steps", "guidance"]) numberField(request, name);
  if ($("seed-mode").value !== "random") numberField(request, "seed");
  return request;
}

/** The request as multipart for /api/edit: the pictures (or the gallery's image_id), no size. */
function editForm(request) {
  const form = new FormData();
  for (const [name, value] of Object.entries(request)) {
    if (name !== "width" && name !== "height") form.append(name, String(value));
  }
  form.append("strength", $("strength").value);
  form.append("wait", "false");
  for (const item of references()) {
    if (item.file) form.append("image", item.file);
    else form.append("image_id", item.imageId);
  }
  return form;
}

function setBusy(busy, text = "") {
  $("generate").disabled = busy;
  show("cancel", busy);
  show("progress", busy);
  show("preview", busy);
  $("status-text").textContent = text;
}

async function submit(event) {
  event.preventDefault();
  $("generate-error").textContent = "";
  const request = readForm();
  setBusy(true, "Queued…");
  $("progress").value = 0;
  startPreview(Number($("width").value) || 1, Number($("height").value) || 1);
  try {
    const job = references().length
      ? await api("/api/edit", { form: editForm(request) })
      : await api("/api/generate", { json: request });
    running = job;
    document.dispatchEvent(new Event("pennello:jobs"));
    followJob(job, { progress, done, failed, cancelled });
  } catch (error) {
    setBusy(false);
    $("generate-error").textContent = error.message;
  }
}

function progress(data) {
  $("progress").value = data.progress;
  $("status-text").textContent = `Step ${data.step} of ${data.total_steps}`;
  if (running && data.step > 0) stepPreview(running.id);
}

function done(job) {
  ended();
  setBusy(false, `Done in ${(job.finished - job.created).toFixed(1)} s`);
  const images = job.images.map((image) => {
    const img = pictureElement(image, `${job.prompt} (seed ${image.seed})`);
    img.loading = "eager";
    return img;
  });
  $("result").replaceChildren(...images);
  if (job.images.length) {
    lastSeed = job.images[0].seed;
    $("seed-mode").querySelector('[value="reuse"]').disabled = false;
  }
  picturesChanged();
}

function ended() {
  running = null;
  stopPreview();
  document.dispatchEvent(new Event("pennello:jobs"));
}

function failed(data) {
  ended();
  setBusy(false);
  $("generate-error").textContent = `Failed: ${data.error}`;
}

function cancelled() {
  ended();
  setBusy(false, "Cancelled");
}

async function cancel() {
  if (!running) return;
  $("status-text").textContent = "Cancelling…";
  try {
    await api(`/api/jobs/${running.id}`, { method: "DELETE" });
  } catch (error) {
    $("generate-error").textContent = error.message;
  }
}

function seedModeChanged() {
  const mode = $("seed-mode").value;
  $("seed").disabled = mode === "random";
  if (mode === "random") $("seed").value = "";
  if (mode === "reuse" && lastSeed !== null) $("seed").value = lastSeed;
}

/** Fill the form from a saved picture's record ("use these settings"). */
export function useSettings(record) {
  $("prompt").value = record.prompt || "";
  $("negative-prompt").value = record.negative_prompt || "";
  if (record.model && [...$("model").options].some((o) => o.value === record.model)) $("model").value = record.model;
  for (const name of ["width", "height", "steps", "guidance"]) {
    if (record[name] !== undefined) $(name).value = record[name];
  }
  matchPreset();
  if (record.seed !== undefined) {
    $("seed-mode").value = "fixed";
    seedModeChanged();
    $("seed").value = record.seed;
  }
  $("n").value = 1;
  clearReferences();
  $("prompt").focus();
}

$("generate-form").addEventListener("submit", submit);
$("cancel").addEventListener("click", cancel);
$("seed-mode").addEventListener("change", seedModeChanged);
