// The queue: the caller's jobs that have not ended (a paired device sees only its own), each with
// how far it is and a cancel button. Polled, more often while anything is waiting or running
// (jobs from other programs, the CLI or the tray, show up too).

import { $, api, el, show } from "./api.js";

const BUSY_POLL_MS = 1000, IDLE_POLL_MS = 4000;
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

/** Show the jobs that have not ended, and look again later. */
export async function refreshQueue() {
  clearTimeout(timer);
  const { jobs } = await api("/api/jobs");
  const waiting = jobs.filter((job) => job.status === "queued" || job.status === "running");
  $("queue").replaceChildren(...waiting.map(jobItem));
  show("queue-empty", waiting.length === 0);
  lookAgain(waiting.length ? BUSY_POLL_MS : IDLE_POLL_MS);
}

function lookAgain(ms) {
  clearTimeout(timer);
  timer = setTimeout(() => {
    if (document.hidden) lookAgain(IDLE_POLL_MS);  // a tab in the background asks nothing
    else refreshQueue().catch(() => lookAgain(IDLE_POLL_MS));
  }, ms);
}

document.addEventListener("pennello:jobs", () => refreshQueue().catch(() => {}));
document.addEventListener("pennello:pictures", () => refreshQueue().catch(() => {}));
