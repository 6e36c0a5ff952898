// Installing a catalog model (owner only). The daemon itself never downloads: it runs
// `pennello install NAME` as its own process and reports what it says. Three steps, each the
// owner's choice: "Install…" asks the daemon for the plan (files, size, source, licence) and
// changes nothing; "Agree and install" is the consent, and starts it; the progress bar follows
// it until the model is installed (then the model list reloads) or it failed; "Stop" cancels.

import { api, el } from "./api.js";

const POLL_MS = 400;

export function formatBytes(bytes) {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(1)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  return bytes >= 1e3 ? `${(bytes / 1e3).toFixed(1)} KB` : `${bytes} B`;
}

/** One model the catalog offers, with its install controls. */
export function catalogItem(entry) {
  const size = entry.bytes ? `${formatBytes(entry.bytes)} download` : "size shown when installing";
  const path = `/api/models/${encodeURIComponent(entry.name)}/install`;
  const box = el("div", { className: "install", "aria-live": "polite" });
  const error = el("p", { className: "error", role: "alert" });
  const failed = (problem) => { error.textContent = problem.message || problem.error || String(problem); };

  const ask = el("button", { type: "button", className: "small", "aria-label": `Install ${entry.name}` }, "Install…");
  ask.addEventListener("click", async () => {
    error.textContent = "";
    ask.disabled = true;
    try {
      const { plan } = await api(path, { method: "POST" });
      box.replaceChildren(...planView(entry, plan, () => start(plan), () => {
        box.replaceChildren();
        ask.disabled = false;
      }));
    } catch (problem) {
      failed(problem);
      ask.disabled = false;
    }
  });

  async function start(plan) {
    error.textContent = "";
    // Agreeing to a plan that records hashes on first fetch agrees to that too: it was shown.
    const consent = plan.first_fetch ? { consent: true, first_fetch: true } : { consent: true };
    try {
      follow(entry, path, box, await api(path, { json: consent }), failed, () => { ask.disabled = false; });
    } catch (problem) {
      failed(problem);
    }
  }

  return el("li", { id: `catalog-${entry.name}` },
    el("strong", {}, entry.name), " ", el("span", { className: "badge" }, `available, ${size}`),
    el("p", { className: "muted" }, entry.description || ""),
    el("p", {}, ask, " ", el("span", { className: "muted" }, "or in a terminal: "),
       el("code", {}, `pennello install ${entry.name}`)),
    box, error);
}

/** What installing would download, and the two answers. */
function planView(entry, plan, agree, decline) {
  const licences = [...new Set(plan.models.map((model) => model.license))].join(", ");
  const from = plan.sources.join(", ");
  const what = plan.first_fetch ? `Downloads from ${from}; its size is known only as it arrives.`
    : plan.bytes ? `Downloads ${plan.files} file${plan.files === 1 ? "" : "s"}, ${formatBytes(plan.bytes)}, from ${from}.`
    : "Nothing to download: its files are on this computer already.";
  const checked = plan.first_fetch
    ? ` Its files cannot be checked against the signed commit (${plan.first_fetch}): installing records their ` +
      "hashes as they first arrive (trust on first use), and later checks compare against those."
    : " Every file is checked against its signed manifest.";
  return [
    el("p", { className: "plan" }, what, " Licence: ", el("strong", {}, licences || "not stated"), ".", checked),
    el("p", {},
      el("button", { type: "button", className: "small", "aria-label": `Agree and install ${entry.name}`, onclick: agree },
         "Agree and install"), " ",
      el("button", { type: "button", className: "small secondary", "aria-label": `Do not install ${entry.name}`,
                     onclick: decline }, "Not now")),
  ];
}

/** Follow a started install until it ends. */
function follow(entry, path, box, install, failed, ended) {
  const bar = el("progress", { max: 1, value: 0, "aria-label": `Installing ${entry.name}` });
  const text = el("span", { className: "muted install-status" });
  const stop = el("button", { type: "button", className: "small danger", "aria-label": `Stop installing ${entry.name}` },
                  "Stop");
  stop.addEventListener("click", () => api(path, { method: "DELETE" }).catch(failed));
  box.replaceChildren(...box.querySelectorAll(".plan"), el("p", {}, bar, " ", text, " ", stop));  // the plan stays

  const show = (now) => {
    bar.max = now.total || 1;
    bar.value = now.total ? now.bytes : 0;
    text.textContent = `Downloading: ${formatBytes(now.bytes)} of ${formatBytes(now.total)}`;
    if (now.state === "running") {
      setTimeout(() => api(path).then(show).catch(failed), POLL_MS);
      return;
    }
    stop.remove();
    if (now.state === "done") {
      text.textContent = `Installed and verified: ${entry.name}`;
      document.dispatchEvent(new Event("pennello:models"));  // models.js lists it as installed
    } else {
      text.textContent = now.state === "cancelled" ? "Stopped; nothing was changed." : "Not installed.";
      if (now.state === "failed") failed(now.error);
      ended();
    }
  };
  show(install);
}
