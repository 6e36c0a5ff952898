// Styles: one subject drawn in several style presets (POST /api/batch), answered with a contact
// sheet of every picture; the pictures themselves land in the gallery.

import { $, api, el, pictureElement, picturesChanged } from "./api.js";

const CHOSEN_AT_FIRST = 4;

export async function loadStyles() {
  const { styles } = await api("/api/styles");
  const boxes = styles.map((style, index) => el("label", { className: "check", title: style.prompt },
    el("input", { type: "checkbox", name: "style", value: style.name, checked: index < CHOSEN_AT_FIRST }),
    ` ${style.name}`, el("span", { className: "muted" }, style.description ? ` — ${style.description}` : "")));
  const legend = $("style-choices").querySelector("legend");
  $("style-choices").replaceChildren(legend, ...boxes);
}

async function runBatch(event) {
  event.preventDefault();
  const styles = [...document.querySelectorAll('#style-choices input:checked')].map((box) => box.value);
  $("batch-error").textContent = "";
  if (!styles.length) {
    $("batch-error").textContent = "Choose at least one style.";
    return;
  }
  $("batch-run").disabled = true;
  $("batch-status").textContent = `Drawing ${styles.length} picture(s)…`;
  try {
    const batch = await api("/api/batch", { json: { subject: $("batch-subject").value, styles } });
    const sheet = batch.contact_sheet;
    $("batch-result").replaceChildren(sheet ? pictureElement(sheet, `Contact sheet: ${batch.subject}`) : "");
    $("batch-status").textContent = `Done: ${batch.styles.length} style(s), seed ${batch.seed}`;
    picturesChanged();
  } catch (error) {
    $("batch-status").textContent = "";
    $("batch-error").textContent = error.message;
  } finally {
    $("batch-run").disabled = false;
  }
}

$("batch-form").addEventListener("submit", runBatch);
