// The picture so far, in the progress box while a job runs. Each step the job's events report
// asks GET /api/jobs/<id>/preview for the latest picture, one request at a time (so a slow link
// or a fast model never piles requests up: the pace is the slower of the steps and the round
// trip). A new picture replaces the old one only once it is decoded, so the box never flashes
// empty between steps; before the first one it shimmers in the picture's shape.

import { $, api } from "./api.js";

let following = null;  // the job whose picture the box shows; null once it ended
let fetching = false;

/** A job is about to start: an empty box of the picture's shape. */
export function startPreview(width, height) {
  stopPreview();
  $("preview").style.aspectRatio = `${width} / ${height}`;
}

/** A step of job ``jobId`` ended: fetch the picture so far, unless a fetch is still on its way. */
export async function stepPreview(jobId) {
  following = jobId;
  if (fetching) return;
  fetching = true;
  try {
    const picture = await api(`/api/jobs/${jobId}/preview`, { blob: true });  // null: none yet (204)
    if (picture && following === jobId) await swapIn(picture, jobId);
  } catch {
    // Only a nicety: the last picture stays, and the job's own events report what went wrong.
  } finally {
    fetching = false;
  }
}

async function swapIn(picture, jobId) {
  const img = new Image();
  img.alt = "";
  img.src = URL.createObjectURL(picture);
  try {
    await img.decode();
  } catch {
    URL.revokeObjectURL(img.src);
    return;
  }
  if (following !== jobId) return URL.revokeObjectURL(img.src);  // it ended while this decoded
  const old = $("preview").querySelector("img");
  $("preview").replaceChildren(img);
  if (old) URL.revokeObjectURL(old.src);
}

/** The job ended: forget its picture (a late answer is dropped) and empty the box. */
export function stopPreview() {
  following = null;
  const old = $("preview").querySelector("img");
  $("preview").replaceChildren();
  if (old) URL.revokeObjectURL(old.src);
}
