// The API client: the team's key from sessionStorage on every call, 401 → back to login.
// Images and downloads need the header too, so they are fetched and shown as object URLs.

import { bytes, h } from "./dom.js";

const KEY = "vr1.apiKey";

export class ApiError extends Error {
  constructor(status, message, body = null) {
    super(message);
    this.status = status;
    this.body = body; // the error's JSON (a rejected dataset's row errors are in ``errors``)
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function logIn(key) {
  sessionStorage.setItem(KEY, key);
}

export function logOut() {
  sessionStorage.removeItem(KEY);
  for (const url of images.values()) url.then((u) => u && URL.revokeObjectURL(u));
  images.clear();
}

/** Back to login when the key a request was refused with is still the one in use (a late
 * answer to a request made with an older key changes nothing). */
function refused(key) {
  if (key !== apiKey()) return;
  logOut();
  const here = location.hash.startsWith("#/login") ? "" : location.hash;
  location.hash = `#/login${here ? `?next=${encodeURIComponent(here)}` : ""}`;
}

function withParams(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value === null || value === undefined || value === "") continue;
    query.set(name, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** The API's error from its status and JSON body (null when it sent none). */
function apiError(status, statusText, body) {
  return new ApiError(status, body?.message || `${status} ${statusText}`, body);
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status line says enough
  }
  return apiError(response.status, response.statusText, body);
}

/**
 * One authenticated call; ``key`` overrides the stored one (the login check), ``body`` is
 * sent as JSON, ``headers`` are added.
 */
export async function call(path, { method = "GET", params, key, body, headers = {} } = {}) {
  const used = key ?? apiKey();
  const init = {
    method,
    headers: { Authorization: `Bearer ${used ?? ""}`, Accept: "application/json", ...headers },
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(withParams(path, params), init);
  if (response.status === 401 && key === undefined) refused(used);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/**
 * A multipart upload with its progress: ``onProgress(sent, total)`` as the bytes go (fetch
 * cannot tell), then the API's answer, or an ApiError with its message.
 */
export function upload(path, form, onProgress) {
  const used = apiKey();
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    request.setRequestHeader("Authorization", `Bearer ${used ?? ""}`);
    request.setRequestHeader("Accept", "application/json");
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    request.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch {
        // not JSON: the status line says enough
      }
      if (request.status >= 200 && request.status < 300) {
        resolve(body);
        return;
      }
      if (request.status === 401) refused(used);
      reject(apiError(request.status, request.statusText, body));
    });
    request.addEventListener("error", () => reject(new ApiError(0, "the upload was cut off")));
    request.send(form);
  });
}

export const get = (path, params) => call(path, { params });

/** A GET whose endpoint may not exist on this server (an older gateway): null on 404. */
export async function optional(path, params) {
  try {
    return await get(path, params);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

/**
 * A page of an optional list: ``{page}``, or ``{why}`` when there is nothing to show (the
 * server has no such list, or refused the filters: its message says why).
 */
export async function pageOf(path, params, absent) {
  try {
    const page = await optional(path, params);
    return page === null ? { why: absent } : { page };
  } catch (error) {
    if (error instanceof ApiError && error.status !== 401) return { why: error.message };
    throw error;
  }
}

async function authorizedBlob(path) {
  const used = apiKey();
  const response = await fetch(path, { headers: { Authorization: `Bearer ${used ?? ""}` } });
  if (response.status === 401) refused(used);
  if (!response.ok) throw await errorOf(response);
  return { blob: await response.blob(), response };
}

// Images do not change once stored: one object URL per API path, the oldest let go first.
const images = new Map();
const KEPT_IMAGES = 500;

function imageUrl(path) {
  if (!images.has(path)) {
    if (images.size >= KEPT_IMAGES) {
      const [oldest, url] = images.entries().next().value;
      images.delete(oldest);
      url.then((u) => u && URL.revokeObjectURL(u));
    }
    images.set(
      path,
      authorizedBlob(path).then(
        ({ blob }) => URL.createObjectURL(blob),
        () => null,
      ),
    );
  }
  return images.get(path);
}

/** An <img> for an API image path, loaded with the key. */
export function apiImage(path, { alt = "", className = "thumb" } = {}) {
  const img = h("img", { class: className, alt });
  imageUrl(path).then((url) => {
    if (url) img.src = url;
    else img.classList.add("broken");
  });
  return img;
}

function filename(response, fallback) {
  const header = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(header);
  return match ? match[1] : fallback;
}

/** A button that downloads an artifact through fetch (the key goes in the header). */
export function downloadButton(artifact) {
  const label = `Download (${bytes(artifact.size_bytes)})`;
  const button = h("button", { class: "button small", type: "button" }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "Downloading…";
    try {
      const { blob, response } = await authorizedBlob(`/v1/artifacts/${artifact.id}/download`);
      const url = URL.createObjectURL(blob);
      const link = h("a", { href: url, download: filename(response, artifact.name) });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      button.textContent = label;
    } catch (error) {
      button.textContent = `Failed: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });
  return button;
}
