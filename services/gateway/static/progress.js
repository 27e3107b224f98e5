// How far a job is, as the server reports it with the job (``job.progress``): a bar with
// "done/total unit", and where the job is with its latest figures.

import { progress } from "./dom.js";

/** "48/150 steps", or "48 steps" while the total is not known. */
export function counted({ done, total, unit }) {
  return total === null ? `${done} ${unit}` : `${done}/${total} ${unit}`;
}

/** A job's progress bar. */
export function progressBar(job) {
  return progress(job.progress.done, job.progress.total, counted(job.progress));
}

/** Where a job is and its latest figures: "stage 2/2 · 48×4 · reward 0.42". */
export function progressStage(job) {
  return [job.progress.stage, job.progress.detail].filter(Boolean).join(" · ");
}
