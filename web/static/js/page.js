// Small DOM helpers shared by the page modules.

const PERFORMER_KEY = 'stage.performer';

/**
 * The element with this id; throws when the template lacks it, so a
 * renamed id fails loudly instead of silently doing nothing.
 *
 * @param {string} id
 * @returns {HTMLElement}
 */
export function byId(id) {
  const element = document.getElementById(id);
  if (!element) {
    throw new Error(`page: no element #${id}`);
  }
  return element;
}

/**
 * Show or hide an element with the `hidden` attribute.
 *
 * @param {HTMLElement} element
 * @param {boolean} visible
 */
export function show(element, visible) {
  element.hidden = !visible;
}

/**
 * Run a callback once the page has loaded (now, if it has).
 *
 * A media element delays the document's load event until its first frame
 * (HTML, "delaying the load event"): a stage that sends no video yet would
 * hold the page in "loading" for good. So pages attach media through this.
 *
 * @param {function(): void} callback
 */
export function afterLoad(callback) {
  if (document.readyState === 'complete') {
    callback();
  } else {
    window.addEventListener('load', callback, { once: true });
  }
}

/**
 * The ICE servers the server put in `<meta name="stage-ice-servers">`:
 * a JSON list of STUN/TURN URLs (or RTCIceServer objects).
 *
 * @returns {Array<string|RTCIceServer>} empty when absent or malformed
 */
export function iceServers() {
  const meta = document.querySelector('meta[name="stage-ice-servers"]');
  if (!meta || !meta.content) {
    return [];
  }
  try {
    const servers = JSON.parse(meta.content);
    return Array.isArray(servers) ? servers : [];
  } catch {
    console.warn('stage: ignoring malformed stage-ice-servers meta tag');
    return [];
  }
}

/**
 * The stage the person created or signed in with on the perform page,
 * kept in localStorage so a reload stays signed in.
 *
 * @returns {{id: string, name: string, key: string}|null}
 */
export function savedPerformer() {
  try {
    const saved = JSON.parse(localStorage.getItem(PERFORMER_KEY));
    if (saved && saved.id && saved.key) {
      return { id: String(saved.id), name: saved.name ?? '', key: saved.key };
    }
  } catch {
    // Storage disabled or holding something else: treat as signed out.
  }
  return null;
}

/**
 * Remember (or, with null, forget) the performer's stage.
 *
 * @param {{id: string, name: string, key: string}|null} performer
 */
export function savePerformer(performer) {
  try {
    if (performer) {
      localStorage.setItem(PERFORMER_KEY, JSON.stringify(performer));
    } else {
      localStorage.removeItem(PERFORMER_KEY);
    }
  } catch {
    console.warn('stage: localStorage is unavailable; sign-in will not last');
  }
}
