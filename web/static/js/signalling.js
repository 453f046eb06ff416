// WHIP (RFC 9725) and WHEP signalling over fetch. DOM-free: the page hands
// in a peer connection and gets back the resource's Location.
//
// Stage does not accept trickle ICE (no PATCH), so every offer is sent only
// after ICE gathering has finished and carries all of its candidates.

import { HttpError, errorFromResponse, send } from './api.js';

// Gathering on a machine with an unreachable STUN server can hang for a
// long time; after this we send the candidates we already have.
const GATHERING_TIMEOUT_MS = 5000;

/**
 * Turn the ICE server list the server gives the pages into an
 * RTCConfiguration. Plain strings (STUN/TURN URLs) are grouped into one
 * entry; objects (`{urls, username, credential}`) are passed through.
 *
 * @param {Array<string|RTCIceServer>} servers
 * @returns {RTCConfiguration}
 */
export function peerConfig(servers = []) {
  const urls = servers.filter((s) => typeof s === 'string');
  const objects = servers.filter((s) => s && typeof s === 'object');
  const iceServers = urls.length > 0 ? [{ urls }, ...objects] : objects;
  return { iceServers, bundlePolicy: 'max-bundle' };
}

/**
 * Publish a performance with WHIP.
 *
 * @param {string} url the WHIP endpoint, e.g. `/whip/{stage id}`
 * @param {string} key the stage key, sent as a Bearer token
 * @param {RTCPeerConnection} pc with its sendonly transceivers added
 * @returns {Promise<{location: string}>} absolute URL of the publishing
 *   resource; DELETE it (see hangUp) to end the show
 * @throws {HttpError} with `.status`, `.retryAfter` and a `.message` for
 *   the person
 */
export async function publish(url, key, pc) {
  return exchange(url, pc, key);
}

/**
 * Start watching with WHEP.
 *
 * @param {string} url the WHEP endpoint, `/whep` for the roulette or
 *   `/whep/{stage id}` for one stage
 * @param {RTCPeerConnection} pc with its recvonly transceivers added
 * @returns {Promise<{location: string}>} absolute URL of the viewer
 *   resource, e.g. `http://host/whep/viewers/{viewer id}`
 * @throws {HttpError} 409 with `.retryAfter` when nothing is live
 */
export async function watch(url, pc) {
  return exchange(url, pc, null);
}

/**
 * End a WHIP or WHEP resource. An already gone resource (404) counts as
 * ended.
 *
 * @param {string} location the URL returned by publish() or watch()
 * @param {string} [key] the stage key, for a publishing resource
 * @param {{keepalive?: boolean}} [options] keepalive lets the request
 *   finish while the page unloads
 * @returns {Promise<void>}
 * @throws {HttpError} for other failures
 */
export async function hangUp(location, key, options = {}) {
  const headers = {};
  if (key) {
    headers.Authorization = `Bearer ${key}`;
  }
  const response = await send(location, {
    method: 'DELETE',
    headers,
    keepalive: options.keepalive ?? false,
  });
  if (!response.ok && response.status !== 404) {
    throw await errorFromResponse(response);
  }
}

async function exchange(url, pc, key) {
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await gatheringComplete(pc, GATHERING_TIMEOUT_MS);

  const headers = { 'Content-Type': 'application/sdp' };
  if (key) {
    headers.Authorization = `Bearer ${key}`;
  }
  const response = await send(url, {
    method: 'POST',
    headers,
    body: pc.localDescription.sdp,
  });
  if (response.status !== 201) {
    throw await errorFromResponse(response);
  }

  // The Location may be relative; it is relative to the endpoint we
  // posted to (RFC 9725 §4.2).
  const header = response.headers.get('Location');
  if (!header) {
    throw new HttpError('The server did not say where the session lives.',
      response.status);
  }
  const location = new URL(header, response.url).href;

  const sdp = await response.text();
  try {
    await pc.setRemoteDescription({ type: 'answer', sdp });
  } catch (err) {
    // The server holds a resource for us that can never connect.
    await hangUp(location, key).catch(() => {});
    throw new HttpError(
      `The server's answer could not be used: ${err.message}`, 0);
  }
  return { location };
}

function gatheringComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === 'complete') {
        finish();
      }
    };
    const timer = setTimeout(finish, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
  });
}
