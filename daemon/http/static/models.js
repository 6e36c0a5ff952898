// Models: the model choice in the form, its size presets and defaults (from the model's signed
// manifest, as /api/models reports them), the installed models, and for the owner the catalog's
// others, each with its install controls (installs.js).

import { $, api, el } from "./api.js";
import { catalogItem } from "./installs.js";

// Pipelines that take more than one picture (the first is edited, the rest are references).
// Others take one; the daemon refuses more with a message naming the field.
const MAX_PICTURES = { QwenImageEditPlusPipeline: 3 };
let models = [];
const CATALOG = JSON.parse(document.querySelector('meta[name="pennello-catalog"]')?.content || "[]");

export function currentModel() {
  return models.find((model) => model.name === $("model").value) || models[0] || null;
}

export function maxPictures() { return MAX_PICTURES[currentModel()?.pipeline] || 1; }

/** Square, portrait and landscape sizes around the manifest's default, in multiples of 8. */
export function sizePresets(defaults) {
  const width = defaults.width || 512, height = defaults.height || 512;
  const grow = (value) => Math.round((value * 4) / 3 / 8) * 8;
  return [
    { label: `${width} × ${height} (default)`, width, height },
    { label: `${width} × ${grow(height)} (portrait)`, width, height: grow(height) },
    { label: `${grow(width)} × ${height} (landscape)`, width: grow(width), height },
    { label: "custom (Advanced)", width: null, height: null },
  ];
}

export async function loadModels() {
  ({ models } = await api("/api/models"));
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(...models.map((model) => new Option(model.name, model.name, model.default, model.default)));
  if (chosen && models.some((model) => model.name === chosen)) select.value = chosen;
  applyDefaults();
  $("models").replaceChildren(...models.map(modelItem));
  const installed = new Set(models.map((model) => model.name));
  const available = CATALOG.filter((entry) => !installed.has(entry.name));
  $("catalog").replaceChildren(...available.map(catalogItem));
  $("catalog-box").hidden = available.length === 0;
}

function modelItem(model) {
  const state = [model.default ? "default" : null, model.loaded ? "in memory" : "installed"].filter(Boolean);
  return el("li", {},
    el("strong", {}, model.name), " ", el("span", { className: "badge" }, state.join(", ")),
    el("p", { className: "muted" }, model.description || ""),
    model.license ? el("p", { className: "muted" }, `Licence: ${model.license}`) : null);
}

/** The chosen model's defaults into the form: size presets, width, height, steps, guidance. */
export function applyDefaults() {
  const defaults = currentModel()?.defaults || {};
  $("size").replaceChildren(...sizePresets(defaults).map((preset, index) => {
    const option = new Option(preset.label, String(index));
    option.dataset.width = preset.width ?? "";
    option.dataset.height = preset.height ?? "";
    return option;
  }));
  for (const name of ["width", "height", "steps", "guidance"]) {
    $(name).value = defaults[name] ?? "";
  }
}

/** Pick the preset that matches width × height, else "custom". */
export function matchPreset() {
  const options = [...$("size").options];
  const match = options.find((o) => o.dataset.width === $("width").value && o.dataset.height === $("height").value);
  $("size").value = (match || options[options.length - 1]).value;
}

$("model").addEventListener("change", applyDefaults);
document.addEventListener("pennello:models", () => loadModels());  // a model was installed
$("size").addEventListener("change", () => {
  const option = $("size").selectedOptions[0];
  if (option.dataset.width) {
    $("width").value = option.dataset.width;
    $("height").value = option.dataset.height;
  } else {
    $("advanced").open = true;  // custom: the size fields are there
  }
});
for (const name of ["width", "height"]) $(name).addEventListener("input", matchPreset);
