// The full-size view of one picture: its stored parameters and provenance, and what to do with it:
// use its settings, download, edit from it, upscale, enhance, delete (asked twice).

import { $, api, el, picturesChanged, show } from "./api.js";
import { useSettings } from "./generate.js";
import { editFromPicture } from "./references.js";

// What a record holds, in the order and words the page shows it (others follow as they are).
const DETAILS = [
  ["prompt", "Prompt"], ["negative_prompt", "Negative prompt"], ["seed", "Seed"], ["size", "Size"],
  ["steps", "Steps"], ["guidance", "Guidance"], ["sampler", "Sampler"], ["model", "Model"],
  ["model_version", "Model version"], ["manifest_digest", "Manifest digest"], ["tool", "Made by tool"],
  ["from_image", "Made from picture"], ["from_upload", "Made from upload (sha256)"],
  ["generator", "Generator"], ["created", "Created"],
];
const HIDDEN = new Set(["id", "url", "owner", "job_id", "width", "height", "format"]);
let current = null;

function describe(key, value) {
  if (key === "created") return new Date(value * 1000).toLocaleString();
  if (key === "copyright") return value.flagged ? "resembles a reference picture" : "no resemblance found";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function details(record) {
  const known = DETAILS.filter(([key]) => record[key] !== undefined && record[key] !== "");
  const rest = Object.keys(record).filter((key) => !HIDDEN.has(key) && !DETAILS.some(([k]) => k === key))
    .map((key) => [key, key.replaceAll("_", " ")]);
  return [...known, ...rest].flatMap(([key, label]) => [el("dt", {}, label), el("dd", {}, describe(key, record[key]))]);
}

function askDelete(asking) {
  show("delete", !asking);
  show("delete-confirm", asking);
  show("delete-keep", asking);
  $(asking ? "delete-keep" : "delete").focus();
}

/** Show ``record`` (a gallery record, or a tool's answer) in the dialog. */
export function openViewer(record) {
  current = record;
  const url = record.url || `/api/images/${record.id}`;
  $("viewer-image").src = url;
  $("viewer-image").alt = record.prompt || "the picture";
  $("viewer-title").textContent = record.prompt || `Picture ${record.id}`;
  $("viewer-details").replaceChildren(...details(record));
  $("download").href = url;
  $("download").download = `${record.id}.${record.format === "jpeg" ? "jpg" : record.format || "png"}`;
  $("viewer-status").textContent = "";
  $("viewer-error").textContent = "";
  $("use-settings").hidden = !record.prompt;
  askDelete(false);
  if (!$("viewer").open) $("viewer").showModal();
}

async function runTool(path, fields, doing) {
  const form = new FormData();
  form.append("image_id", current.id);
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  $("viewer-status").textContent = doing;
  $("viewer-error").textContent = "";
  try {
    const answer = await api(path, { form });
    const source = current;
    picturesChanged();
    openViewer({ ...answer.image, tool: path.split("/").pop(), from_image: source.id });
    $("viewer-status").textContent = "Done: the new picture is in the gallery.";
  } catch (error) {
    $("viewer-status").textContent = "";
    $("viewer-error").textContent = error.message;
  }
}

async function deletePicture() {
  try {
    await api(`/api/images/${current.id}`, { method: "DELETE" });
    $("viewer").close();
    picturesChanged();
  } catch (error) {
    $("viewer-error").textContent = error.message;
  }
}

$("viewer-close").addEventListener("click", () => $("viewer").close());
$("use-settings").addEventListener("click", () => { $("viewer").close(); useSettings(current); });
$("edit-from").addEventListener("click", () => {
  $("viewer").close();
  editFromPicture(current);
  $("prompt").focus();
});
$("upscale").addEventListener("click", () => runTool("/api/upscale", { scale: "2" }, "Upscaling…"));
$("enhance").addEventListener("click", () => runTool("/api/enhance", {}, "Enhancing…"));
$("delete").addEventListener("click", () => askDelete(true));
$("delete-keep").addEventListener("click", () => askDelete(false));
$("delete-confirm").addEventListener("click", deletePicture);
