// Pennello's web page: talks only to this daemon's API, loads nothing from elsewhere. This module
// decides who is looking (the owner, a paired device, or a device that must pair first) and
// starts the parts: generate.js, queue.js, gallery.js with viewer.js, styles.js, models.js,
// devices.js; api.js is how each of them talks to the daemon.

import { $, api, show } from "./api.js";
import { loadDevices } from "./devices.js";
import { loadGallery } from "./gallery.js";
import "./generate.js";
import { loadModels } from "./models.js";
import { refreshQueue } from "./queue.js";
import { loadStyles } from "./styles.js";

const APP_SECTIONS = ["generate-section", "queue-section", "gallery-section", "styles-section", "models-section"];
const UNAUTHORIZED = "This page may not use Pennello: open the page with `pennello open` on the computer " +
                     "that runs it, or pair this device.";

function suggestName() {
  if (!$("pair-name").value) $("pair-name").value = navigator.platform ? `browser on ${navigator.platform}` : "browser";
}

async function start() {
  const status = await api("/api/pair/status");
  if (!status.paired) {
    $("who").textContent = "This device is not paired yet.";
    const code = new URLSearchParams(location.search).get("pair");
    if (code) $("pair-code").value = code;
    suggestName();
    show("pair-section");
    return;
  }
  $("who").textContent = status.owner
    ? `This computer (owner)${status.lan ? " · other devices on the network may pair" : " · local only"}`
    : `Paired as “${status.device.name}”`;
  show("pair-section", false);
  show("auth-banner", false);
  for (const id of APP_SECTIONS) show(id);
  show("nav");
  show("devices-section", status.owner);
  show("nav-devices", status.owner);
  await Promise.all([loadModels(), loadGallery(), refreshQueue(), loadStyles(),
                     status.owner ? loadDevices() : null]);
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

// Any 401 (a revoked device, an expired login): say what to do, and offer pairing again.
document.addEventListener("pennello:unauthorized", () => {
  $("auth-banner").textContent = UNAUTHORIZED;
  show("auth-banner");
  suggestName();
  show("pair-section");
});

start().catch((error) => { $("who").textContent = `Cannot reach the daemon: ${error.message}`; });
