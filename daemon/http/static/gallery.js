// The gallery: the caller's saved pictures, newest first, a page at a time ("Load more"), each a
// button that opens the full-size view. It reloads whenever pictures are made or deleted.

import { $, api, el, pictureElement, show } from "./api.js";
import { openViewer } from "./viewer.js";

const PAGE = 24;
const records = new Map();  // id -> record, for the pictures shown (and the latest results)
let nextOffset = 0;

function thumbnail(record) {
  const label = record.prompt || record.tool || record.id;
  return el("button", { type: "button", className: "thumb", "aria-label": `Open: ${label}`,
                        onclick: () => openViewer(record) }, pictureElement(record, label));
}

async function loadPage(offset, limit = PAGE) {
  const page = await api(`/api/outputs?limit=${limit}&offset=${offset}`);
  for (const record of page.images) records.set(record.id, record);
  nextOffset = page.next_offset;
  show("more", nextOffset !== null);
  return page.images.map(thumbnail);
}

/** Reload from the newest, keeping as many pictures shown as before (at least a page). */
export async function loadGallery() {
  const shown = Math.max(PAGE, $("gallery").childElementCount);
  records.clear();
  $("gallery").replaceChildren(...await loadPage(0, Math.min(shown, 500)));
}

async function loadMore() {
  if (nextOffset === null) return;
  $("more").disabled = true;
  try {
    $("gallery").append(...await loadPage(nextOffset));
  } finally {
    $("more").disabled = false;
  }
}

$("more").addEventListener("click", loadMore);
document.addEventListener("pennello:pictures", () => loadGallery().catch(() => {}));
// A picture just made opens like one of the gallery (its record arrives with the reload).
$("result").addEventListener("click", (event) => {
  const id = event.target.closest("img")?.src.split("/").pop();
  if (records.has(id)) openViewer(records.get(id));
});
