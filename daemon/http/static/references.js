// The pictures a generation starts from (image-to-image, edits): uploaded, dropped, or a picture of
// the gallery ("edit from this picture"). With any, Generate sends them to /api/edit.

import { $, el } from "./api.js";
import { maxPictures } from "./models.js";

// Each is {file} (an upload) or {imageId, label} (a gallery picture, not sent again).
let chosen = [];

export function references() { return chosen; }

export function clearReferences() { setReferences([]); }

export function editFromPicture(record) {
  setReferences([{ imageId: record.id, label: record.prompt || record.id }]);
}

function setReferences(list) {
  chosen = list;
  $("reference-list").replaceChildren(...chosen.map((item, index) => el("li", {},
    el("span", {}, item.file ? item.file.name : `gallery: ${item.label}`),
    el("button", { type: "button", className: "secondary small", "aria-label": `Remove picture ${index + 1}`,
                   onclick: () => setReferences(chosen.filter((_, i) => i !== index)) }, "Remove"))));
  $("strength-label").hidden = chosen.length === 0;
  if (chosen.length) $("references").open = true;
  $("generate").textContent = chosen.length ? "Generate from the picture" : "Generate";
}

function addFiles(files) {
  const pictures = [...files].filter((file) => /^image\/(png|jpeg|webp)$/.test(file.type));
  const most = maxPictures();
  // Added to the uploads while they fit, else instead of them; a gallery picture is replaced.
  const uploads = chosen.filter((item) => item.file);
  const added = pictures.map((file) => ({ file }));
  const all = uploads.length + added.length > most ? added : [...uploads, ...added];
  $("generate-error").textContent = all.length > most
    ? `This model takes ${most === 1 ? "one picture" : `up to ${most} pictures`}; the first ${most} are kept.` : "";
  setReferences(all.slice(0, most));
  $("references").open = true;
}

$("reference-files").addEventListener("change", (event) => {
  addFiles(event.target.files);
  event.target.value = "";  // choosing the same file again still counts
});
// The whole form takes dropped pictures: a target the size of a phone's finger, or of a window.
const zone = $("generate-form");
zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (event) => {
  event.preventDefault();
  zone.classList.remove("over");
  addFiles(event.dataTransfer.files);
});
