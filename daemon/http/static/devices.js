// Devices (owner only): a pairing code with its QR code, and the paired devices, each revocable.

import { $, api, el, show } from "./api.js";

let expiryTimer = null;

async function newCode() {
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
}

function deviceItem(token) {
  const used = token.last_used ? `last used ${new Date(token.last_used * 1000).toLocaleString()}` : "never used";
  const revoke = el("button", { type: "button", className: "danger small", "aria-label": `Revoke ${token.name}` },
                    "Revoke");
  // Asked twice: the first click only arms the button, so a stray tap revokes nothing.
  revoke.addEventListener("click", async () => {
    if (!revoke.dataset.armed) {
      revoke.dataset.armed = "1";
      revoke.textContent = `Yes, revoke ${token.name}`;
      return;
    }
    try {
      await api(`/api/tokens/${token.id}`, { method: "DELETE" });
      await loadDevices();
    } catch (error) {
      $("devices-error").textContent = error.message;
    }
  });
  return el("li", {}, el("strong", {}, token.name), " ",
            el("span", { className: "badge" }, token.scope || "device"), " ",
            el("span", { className: "muted" }, used), " ", revoke);
}

export async function loadDevices() {
  const { tokens } = await api("/api/tokens");
  $("devices").replaceChildren(...tokens.map(deviceItem));
}

$("new-code").addEventListener("click", () => newCode().then(loadDevices).catch((error) => {
  $("devices-error").textContent = error.message;
}));
