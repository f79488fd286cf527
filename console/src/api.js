// The admin API, with the token from session storage as a bearer header.
const KEY = 'shardgate.token';

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

// Calls the admin API; answers the parsed JSON (or text), throws ApiError on a
// status other than 2xx. A 401 signs the console out.
export async function call(method, path, body, { raw = false } = {}) {
  const headers = { authorization: `Bearer ${token() || ''}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, `the admin API did not answer (${e.message})`);
  }
  const text = await r.text();
  if (raw && r.ok) return text;
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (r.status === 401) {
    document.dispatchEvent(new CustomEvent('shardgate:unauthorized'));
    throw new ApiError(401, 'Unauthorized', data);
  }
  if (!r.ok) {
    const message = data && typeof data === 'object' && data.message ? data.message : (text || r.statusText);
    throw new ApiError(r.status, message, data);
  }
  return data;
}

// GET /metrics needs no token; the console reads it as the scraper does.
export async function metrics() {
  const r = await fetch('/metrics', { cache: 'no-store' });
  if (!r.ok) throw new ApiError(r.status, `GET /metrics answered ${r.status}`);
  return r.text();
}
