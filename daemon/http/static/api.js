// The one way the page talks to the daemon: same-origin requests (the pairing cookie and the
// owner's login cookie ride along), errors as exceptions with the daemon's message, and job events.

// This run's page secret, present when the page was served to this computer: it shows the daemon
// that a request comes from its own page and not from another site's.
const PAGE_TOKEN = document.querySelector('meta[name="pennello-page"]')?.content || "";

export const $ = (id) => document.getElementById(id);

export function show(id, visible = true) { $(id).hidden = !visible; }

/** Create an element: el("button", {type: "button", onclick: f}, "Text", child…). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && name !== "list") node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

/** Tell every part of the page that the gallery changed (made, edited or deleted pictures). */
export function picturesChanged() { document.dispatchEvent(new Event("pennello:pictures")); }

/** Fetch ``path``: ``json`` sends a JSON body (POST unless ``method``), ``form`` a FormData;
 *  ``blob`` answers a picture as a Blob (null for 204: nothing to show yet). */
export async function api(path, { json, form, method, blob } = {}) {
  const init = { credentials: "same-origin", method: method || (json || form ? "POST" : "GET"), headers: {} };
  if (PAGE_TOKEN) init.headers["X-Pennello-Page"] = PAGE_TOKEN;
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  const response = await fetch(path, init);
  if (blob && response.ok) return response.status === 204 ? null : response.blob();
  const body = response.headers.get("Content-Type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const message = body?.error?.message || `${response.status} ${response.statusText}`;
    // A revoked device or an expired login: the page says what to do instead of failing piecemeal.
    if (response.status === 401) document.dispatchEvent(new CustomEvent("pennello:unauthorized"));
    throw Object.assign(new Error(message), { status: response.status, field: body?.error?.field });
  }
  return body;
}

/** Follow a job's server-sent events: ``on.progress(data)``, then one of done / failed / cancelled. */
export function followJob(job, on) {
  const events = new EventSource(`/api/jobs/${job.id}/events`, { withCredentials: true });
  const end = (handler) => (event) => { events.close(); handler(JSON.parse(event.data)); };
  events.addEventListener("progress", (event) => on.progress(JSON.parse(event.data)));
  events.addEventListener("done", end(on.done));
  events.addEventListener("failed", end(on.failed));
  events.addEventListener("cancelled", end(on.cancelled));
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) on.failed({ error: "lost the connection to the daemon" });
  };
  return events;
}

/** A picture as an <img>; the copyright check flags a picture, it never hides it. */
export function pictureElement(image, label) {
  const img = el("img", { src: image.url || `/api/images/${image.id}`, alt: label, title: label, loading: "lazy" });
  if (image.copyright && image.copyright.flagged) {
    const names = image.copyright.matches.map((match) => match.reference).join(", ");
    img.classList.add("flagged");
    img.title = `${label}\nCopyright check: resembles ${names}`;
  }
  return img;
}
