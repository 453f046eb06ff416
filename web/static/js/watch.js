// The roulette. One peer connection lasts the whole visit: Next asks the
// server to move this viewer's tracks to another stage, so the page never
// renegotiates; it only learns the new stage from the viewer's events.

import { requestJson } from './api.js';
import { afterLoad, byId, iceServers, show } from './page.js';
import { hangUp, peerConfig, watch } from './signalling.js';

const DEFAULT_RETRY_SECONDS = 3;
const ERROR_RETRY_SECONDS = 5;
const DISCONNECTED_GRACE_MS = 8000;
const NO_VIDEO_AFTER_MS = 2000;
const FRAME_GAP_MS = 1500;
// A stage whose own picture was seen and then stopped is most likely one
// whose performer dropped: the server holds it, and says so, once it has
// had no media for 2 s (QUIET_AFTER in stage/venue.py), checked every
// 0.25 s and told a moment later, through another worker maybe. Until well
// past that, a frozen picture is not taken for an audio-only stage.
const STALLED_GAP_MS = 5000;
const VIDEO_CHECK_MS = 250;
const NOTICE_MS = 3000;
// Answers about this page's own viewer that mean it no longer exists: 404
// from Stage, 502 and 503 from a front whose worker carrying it died.
const VIEWER_GONE = new Set([404, 502, 503]);
// After the performer is back, how long the reconnecting notice waits for
// their new picture at most.
const BACK_WAIT_MS = 3000;

const player = byId('player');
const screen = byId('screen');
const waiting = byId('waiting');
const reconnecting = byId('reconnecting');
const connecting = byId('connecting');
const lost = byId('lost');
const lostTitle = byId('lost-title');
const lostNote = byId('lost-note');
const audioOnly = byId('audio-only');
const audioOnlyName = byId('audio-only-name');
const unmute = byId('unmute');
const notice = byId('notice');
const stageName = byId('stage-name');
const watching = byId('watching');
const liveBadge = byId('live-badge');
const nextButton = byId('next');
const watchError = byId('watch-error');

// Kept up to date for automated tests and for anyone in the console.
const state = { pc: null, viewerId: null, stage: null };
window.stageWatch = state;

// A stage picked on the home page; tried once, then the roulette decides.
let wantedStage = new URLSearchParams(window.location.search).get('stage');

let viewerUrl = null;
let events = null;
let retryTimer = null;
let disconnectedTimer = null;
let nextInFlight = false;
// The viewer resource being asked about after its event stream broke.
let checking = null;
// Why the connection notice is up: 'dropped' (ICE may recover by itself)
// or 'gone' (a new connection is on its way); null when it is not.
let lostFor = null;
let noticeTimer = null;
// The stage whose name the page shows (it lags state.stage until the picture).
let namedId = null;

// Each start() bumps the generation; callbacks of an older peer connection
// compare it and stay quiet, so a late answer cannot undo a newer visit.
let generation = 0;

// Video arrival, for the audio-only placeholder.
let switchedAt = performance.now();
let framesPc = null;
let lastFrames = null;
let lastFrameAt = -Infinity;
// When the server said the lost performer is back (null: not waiting for
// their new picture).
let backAt = null;

async function start() {
  const run = ++generation;
  clearTimeout(retryTimer);
  stop();

  const pc = new RTCPeerConnection(peerConfig(iceServers()));
  state.pc = pc;
  // Video on a new connection is awaited afresh, whatever stage it brings.
  switchedAt = performance.now();
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addTransceiver('video', { direction: 'recvonly' });

  // One MediaStream for both tracks, whatever streams the server declares.
  const media = new MediaStream();
  let playback = null;
  pc.addEventListener('track', (event) => {
    media.addTrack(event.track);
    afterLoad(() => {
      if (state.pc !== pc) {
        return;
      }
      if (player.srcObject !== media) {
        player.srcObject = media;
      }
      playback ??= startPlayback();
    });
  });
  pc.addEventListener('connectionstatechange', () => {
    if (run === generation) {
      onConnectionState(pc);
    }
  });

  const endpoint = wantedStage
    ? `/whep/${encodeURIComponent(wantedStage)}`
    : '/whep';
  try {
    const { location } = await watch(endpoint, pc);
    if (run !== generation) {
      hangUp(location).catch(() => {});
      return;
    }
    viewerUrl = location;
    state.viewerId = new URL(location).pathname.split('/').pop();
    wantedStage = null;
    show(watchError, false);
    show(waiting, false);
    listen(location);
  } catch (err) {
    if (run !== generation) {
      return;
    }
    pc.close();
    state.pc = null;
    failedToStart(err);
  }
}

function failedToStart(err) {
  if (wantedStage && (err.status === 404 || err.status === 409)) {
    wantedStage = null;
    flash('That stage is not live any more — finding you another.');
    retryIn(0);
    return;
  }
  if (err.status === 409) {
    setStage(null);
    retryIn(err.retryAfter ?? DEFAULT_RETRY_SECONDS);
    return;
  }
  show(connecting, false);
  watchError.textContent = `${err.message} Trying again…`;
  show(watchError, true);
  retryIn(err.retryAfter ?? ERROR_RETRY_SECONDS);
}

function retryIn(seconds) {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(start, seconds * 1000);
}

// Ends the current visit, if any. Safe to call twice.
function stop() {
  clearTimeout(disconnectedTimer);
  events?.close();
  events = null;
  if (viewerUrl) {
    hangUp(viewerUrl).catch(() => {});
    viewerUrl = null;
  }
  state.viewerId = null;
  state.pc?.close();
  state.pc = null;
}

function onConnectionState(pc) {
  clearTimeout(disconnectedTimer);
  switch (pc.connectionState) {
    case 'connected':
      if (lostFor === 'dropped') {
        showLost(null);
      }
      break;
    case 'failed':
      showLost('gone', 'Lost the connection', 'Reconnecting…');
      start();
      break;
    case 'disconnected':
      // Often a short network blip that ICE recovers from by itself.
      showLost('dropped', 'The connection dropped', 'Trying to get it back…');
      disconnectedTimer = setTimeout(() => {
        if (pc === state.pc && pc.connectionState !== 'connected') {
          showLost('gone', 'Lost the connection', 'Reconnecting…');
          start();
        }
      }, DISCONNECTED_GRACE_MS);
      break;
  }
}

// What went wrong with the connection, said over the picture. A picture
// that stopped because the connection did says nothing about the stage,
// so nothing about the stage (such as "audio only") is shown meanwhile.
function showLost(why, title = '', note = '') {
  lostFor = why;
  if (why) {
    lostTitle.textContent = title;
    lostNote.textContent = note;
    show(audioOnly, false);
  }
  show(lost, Boolean(why));
}

// This page's viewer is gone with the process that carried it (a worker
// that died, a server that started again): its stage may be gone too, and
// its connection is over. Say so at once and land on another stage.
function connectionGone() {
  viewerUrl = null; // nothing left to hang up
  clearStage();
  showLost('gone', 'Lost the connection to this stage',
    'Finding you another one…');
  start();
}

// The browser may refuse sound without a click first; then play muted and
// offer a button.
async function startPlayback() {
  player.muted = false;
  try {
    await player.play();
    show(unmute, false);
  } catch (err) {
    if (err.name !== 'NotAllowedError') {
      return;
    }
    player.muted = true;
    show(unmute, true);
    await player.play().catch(() => {});
  }
}

unmute.addEventListener('click', () => {
  player.muted = false;
  player.play().catch(() => {});
  show(unmute, false);
});

// viewer events

function listen(url) {
  events?.close();
  const source = new EventSource(`${url}/events`);
  events = source;
  source.addEventListener('message', (event) => {
    setStage(JSON.parse(event.data).stage ?? null);
  });
  source.addEventListener('error', () => {
    // The stream broke, or the server refused it. EventSource retries by
    // itself after a pause unless refused; but if this viewer is gone (its
    // worker died), waiting would only leave a frozen picture on screen.
    // So the page asks at once.
    if (source === events) {
      checkViewer(url);
    }
  });
}

async function checkViewer(url) {
  if (checking === url) {
    return;
  }
  checking = url;
  const run = generation;
  const current = () => run === generation && url === viewerUrl;
  try {
    const data = await requestJson(url);
    if (current()) {
      setStage(data.stage ?? null);
      if (events?.readyState === EventSource.CLOSED) {
        listen(url);
      }
    }
  } catch (err) {
    if (!current()) {
      return;
    }
    if (VIEWER_GONE.has(err.status)) {
      connectionGone();
      return;
    }
    // Stage cannot be reached right now: ask again in a moment, while the
    // picture goes on if the media still flows.
    setTimeout(() => {
      if (current()) {
        checkViewer(url);
      }
    }, DEFAULT_RETRY_SECONDS * 1000);
  } finally {
    if (checking === url) {
      checking = null;
    }
  }
}

function setStage(stage) {
  const previous = state.stage;
  state.stage = stage;
  show(connecting, false);
  if (lostFor === 'gone') {
    // News from the new connection's viewer: the stage it landed on.
    showLost(null);
  }

  if (!stage) {
    clearStage();
    screen.classList.add('is-waiting');
    show(waiting, true);
    return;
  }

  screen.classList.remove('is-waiting');
  show(waiting, false);
  show(watching.parentElement, true);
  nextButton.disabled = false;
  show(liveBadge, !stage.reconnecting);
  watching.textContent = String(stage.viewers ?? 0);
  showHold(stage, previous);
  if (stage.id !== previous?.id) {
    stageSwitched();
    // The name follows the picture: it changes when the first frame after
    // the switch is shown, not when the server answers.
    whenPictureArrives(() => {
      if (state.stage?.id === stage.id) {
        nameStage(state.stage);
      }
    });
  } else if (namedId === stage.id) {
    // News about the stage already named (its count). While its picture is
    // still awaited, the callback above names it with this newest data.
    nameStage(stage);
  }
}

// No stage: nothing to name, to count or to move on from.
function clearStage() {
  state.stage = null;
  show(liveBadge, false);
  show(audioOnly, false);
  show(reconnecting, false);
  backAt = null;
  namedId = null;
  stageName.textContent = '';
  watching.textContent = '0';
  show(watching.parentElement, false);
  nextButton.disabled = true;
  document.title = 'Watch — Stage';
}

// The server holds a stage whose performer was lost (a reload, an encoder
// restart) for a few seconds: their last picture stays on screen under a
// notice. When they are back the notice stays until their new picture is
// decoded; if they are not, the server moves this viewer on.
function showHold(stage, previous) {
  const sameStage = stage.id === previous?.id;
  if (stage.reconnecting) {
    backAt = null;
    show(reconnecting, true);
    show(audioOnly, false);
  } else if (sameStage && previous.reconnecting) {
    backAt = performance.now();
    switchedAt = backAt;
  } else if (!sameStage) {
    backAt = null;
    show(reconnecting, false);
  }
}

function nameStage(stage) {
  namedId = stage.id;
  stageName.textContent = stage.name;
  audioOnlyName.textContent = stage.name;
  document.title = `${stage.name} — Stage`;
}

const NAME_FALLBACK_MS = 1500;

// Frames of the previous stage received just before the switch are still on
// their way to the screen for a moment after it; a frame received after the
// page learned of the switch is the new stage's. Without receiveTime in the
// frame's metadata, the first frame shown has to do.
function whenPictureArrives(callback) {
  const learned = performance.now();
  let done = false;
  const once = () => {
    if (!done) {
      done = true;
      callback();
    }
  };
  // An audio-only stage never shows a frame: name it after a moment anyway.
  setTimeout(once, NAME_FALLBACK_MS);
  if (!('requestVideoFrameCallback' in player) || !player.srcObject) {
    once();
    return;
  }
  const onFrame = (now, meta) => {
    if (meta.receiveTime === undefined || meta.receiveTime >= learned) {
      once();
    } else if (!done) {
      player.requestVideoFrameCallback(onFrame);
    }
  };
  player.requestVideoFrameCallback(onFrame);
}

// Next

async function next() {
  if (nextInFlight || !viewerUrl || nextButton.disabled) {
    return;
  }
  nextInFlight = true;
  nextButton.classList.add('is-busy');
  nextButton.setAttribute('aria-busy', 'true');
  try {
    const data = await requestJson(`${viewerUrl}/next`, { method: 'POST' });
    if (data && 'stage' in data) {
      setStage(data.stage);
    }
  } catch (err) {
    if (err.status === 409) {
      flash('No other stage is live right now');
    } else if (VIEWER_GONE.has(err.status)) {
      connectionGone();
    } else {
      flash(err.message);
    }
  } finally {
    nextInFlight = false;
    nextButton.classList.remove('is-busy');
    nextButton.removeAttribute('aria-busy');
  }
}

nextButton.addEventListener('click', next);

document.addEventListener('keydown', (event) => {
  if (event.repeat || event.altKey || event.ctrlKey || event.metaKey) {
    return;
  }
  if (event.key !== ' ' && event.key !== 'ArrowRight') {
    return;
  }
  const target = event.target instanceof Element ? event.target : null;
  if (target?.closest('input, textarea, select, [contenteditable]')) {
    return;
  }
  // A focused button or link already acts on Space by itself.
  if (event.key === ' ' && target?.closest('button, a, summary')) {
    return;
  }
  event.preventDefault();
  next();
});

function flash(text) {
  notice.textContent = text;
  show(notice, true);
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => show(notice, false), NOTICE_MS);
}

// Audio-only stages, and the moment between two stages.
//
// After a switch the receiver keeps its track, so the element would go on
// showing the previous performer's last frame until new video is decoded.
// Decoded-frame counts from getStats tell when the new stage's video
// arrives; until then the picture is dimmed. From NO_VIDEO_AFTER_MS after
// the switch, a gap of FRAME_GAP_MS without a decoded frame brings up the
// audio-only placeholder. The gap is shorter than the delay because frames
// of the previous stage still in flight are decoded just after a switch.
// Once the stage has shown its own picture, the gap is STALLED_GAP_MS: its
// video stopping means its performer was most likely lost, which the
// server's hold says in its own words.

function stageSwitched() {
  switchedAt = performance.now();
  screen.classList.add('is-switching');
  show(audioOnly, false);
}

async function checkVideo() {
  const pc = state.pc;
  if (!pc || !state.stage) {
    return;
  }
  const now = performance.now();
  const frames = await framesDecoded(pc);
  if (pc !== framesPc) {
    // A new peer connection counts from zero.
    framesPc = pc;
    lastFrames = null;
  }
  if (frames !== null) {
    if (lastFrames !== null && frames > lastFrames) {
      lastFrameAt = now;
    }
    lastFrames = frames;
  }

  const fresh = frames === null
    ? player.videoWidth > 0
    : lastFrameAt > switchedAt && player.videoWidth > 0;
  if (fresh) {
    screen.classList.remove('is-switching');
  }
  if (backAt !== null && (fresh || now - backAt >= BACK_WAIT_MS)) {
    backAt = null;
    show(reconnecting, false);
  }

  // No video says something about the stage only while the connection
  // works; a lost connection is said by its own notice.
  const connected = pc.connectionState === 'connected' && lostFor === null;
  const held = Boolean(state.stage?.reconnecting) || backAt !== null;
  // Frames still decoded this late after the switch are this stage's own.
  const ownVideo = lastFrameAt - switchedAt > NO_VIDEO_AFTER_MS - FRAME_GAP_MS;
  const gap = ownVideo ? STALLED_GAP_MS : FRAME_GAP_MS;
  const recent = frames === null || now - lastFrameAt < gap;
  const noVideo = player.videoWidth === 0 || !recent;
  show(audioOnly, connected && !held && noVideo &&
    now - switchedAt >= NO_VIDEO_AFTER_MS);
}

async function framesDecoded(pc) {
  try {
    const report = await pc.getStats();
    for (const stats of report.values()) {
      if (stats.type === 'inbound-rtp' && stats.kind === 'video') {
        return stats.framesDecoded ?? null;
      }
    }
  } catch {
    // A closed connection has no stats; the next check will see a new one.
  }
  return null;
}

setInterval(checkVideo, VIDEO_CHECK_MS);

// Leaving: end the visit so the performer's count drops at once.

window.addEventListener('pagehide', () => {
  generation++;
  clearTimeout(retryTimer);
  events?.close();
  events = null;
  if (viewerUrl) {
    hangUp(viewerUrl, null, { keepalive: true }).catch(() => {});
    viewerUrl = null;
  }
  state.pc?.close();
  state.pc = null;
});

window.addEventListener('pageshow', (event) => {
  if (event.persisted) {
    start();
  }
});

start();
