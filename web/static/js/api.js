// Talking JSON to Stage's HTTP API. DOM-free: usable from any page module.

/**
 * An HTTP answer that was not the one we asked for.
 *
 * `message` is the server's sentence for a person when it sent one.
 */
export class HttpError extends Error {
  /**
   * @param {string} message text that can be shown to the person
   * @param {number} status HTTP status, or 0 when the server was not reached
   * @param {number|null} retryAfter seconds from Retry-After, if present
   */
  constructor(message, status, retryAfter = null) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/**
 * Read Retry-After as a number of seconds (RFC 9110 §10.2.3): either
 * delay-seconds or an HTTP date.
 *
 * @param {string|null} value the header value
 * @returns {number|null} seconds to wait, or null when absent or unreadable
 */
export function parseRetryAfter(value) {
  if (value === null || value.trim() === '') {
    return null;
  }
  const seconds = Number(value);
  if (Number.isFinite(seconds)) {
    return Math.max(0, seconds);
  }
  const date = Date.parse(value);
  if (Number.isNaN(date)) {
    return null;
  }
  return Math.max(0, (date - Date.now()) / 1000);
}

/**
 * Build an HttpError from a failed response, reading `{"error": "..."}`
 * from its body when the server sent one.
 *
 * @param {Response} response
 * @returns {Promise<HttpError>}
 */
export async function errorFromResponse(response) {
  let message = '';
  try {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      if (body && typeof body.error === 'string') {
        message = body.error;
      }
    } catch {
      // Not JSON: a proxy or a plain-text error page. Short text is still
      // more useful than nothing.
      if (text.length > 0 && text.length < 200) {
        message = text.trim();
      }
    }
  } catch {
    // The body could not be read; the status alone will have to do.
  }
  if (!message) {
    message = `The server answered ${response.status}` +
      (response.statusText ? ` (${response.statusText})` : '') + '.';
  }
  const retryAfter = parseRetryAfter(response.headers.get('Retry-After'));
  return new HttpError(message, response.status, retryAfter);
}

/**
 * fetch() that turns "the network is down" into an HttpError with status 0,
 * so callers handle one kind of error.
 *
 * @param {string} url
 * @param {RequestInit} [init]
 * @returns {Promise<Response>}
 */
export async function send(url, init = {}) {
  try {
    return await fetch(url, init);
  } catch (err) {
    if (err.name === 'AbortError') {
      throw err;
    }
    throw new HttpError(
      'Stage cannot be reached. Check your connection and try again.', 0);
  }
}

/**
 * Call a JSON endpoint.
 *
 * @param {string} url
 * @param {object} [options]
 * @param {string} [options.method] defaults to GET, or POST with a body
 * @param {*} [options.body] sent as JSON when given
 * @param {string} [options.key] a stage key, sent as a Bearer token
 * @param {boolean} [options.keepalive] let the request outlive the page
 * @returns {Promise<*>} the parsed body, or null for an empty answer
 * @throws {HttpError} for any status outside 200–299
 */
export async function requestJson(url, options = {}) {
  const headers = { Accept: 'application/json' };
  const init = {
    method: options.method ?? (options.body === undefined ? 'GET' : 'POST'),
    headers,
    keepalive: options.keepalive ?? false,
  };
  if (options.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(options.body);
  }
  if (options.key) {
    headers.Authorization = `Bearer ${options.key}`;
  }

  const response = await send(url, init);
  if (!response.ok) {
    throw await errorFromResponse(response);
  }
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}
