// The queue: the caller's jobs that have not ended (a paired device sees only its own), each with
// how far it is and a cancel button. Polled while anything is waiting or running.

import { $, api, el, show } from "./api.js";

const POLL_MS = 1500;
let timer = null;

function jobItem(job) {
  const what = job.prompt || job.kind || job.id;
  const state = job.status === "running" ? `running, ${Math.round(job.progress * 100)} %` : "waiting";
  return el("li", {},
    el("span", {}, `${what} `), el("span", { className: "badge" }, state), " ",
    el("button", { type: "button", className: "secondary small", "aria-label": `Cancel: ${what}`,
                   onclick: () => api(`/api/jobs/${job.id}`, { method: "DELETE" }).finally(refreshQueue) },
       "Cancel"));
}

/** Show the jobs that have not ended; poll again while there are any. */
export async function refreshQueue() {
  clearTimeout(timer);
  const { jobs } = await api("/api/jobs");
  const waiting = jobs.filter((job) => job.status === "queued" || job.status === "running");
  $("queue").replaceChildren(...waiting.map(jobItem));
  show("queue-empty", waiting.length === 0);
  if (waiting.length) timer = setTimeout(() => refreshQueue().catch(() => {}), POLL_MS);
}

document.addEventListener("pennello:jobs", () => refreshQueue().catch(() => {}));
document.addEventListener("pennello:pictures", () => refreshQueue().catch(() => {}));
