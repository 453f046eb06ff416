// Performer page: create a stage (or sign in with a key), preview the
// camera, go live over WHIP, end the show.

import { requestJson } from './api.js';
import {
  afterLoad, byId, iceServers, savePerformer, savedPerformer, show,
} from './page.js';
import { hangUp, peerConfig, publish } from './signalling.js';

const EVENTS_RETRY_MS = 5000;
// When the stage's event stream breaks while on air: how often, and how many
// times, the page asks the server how its show stands.
const CHECK_PAUSE_MS = 1000;
const CHECK_TRIES = 10;
// Set when the page goes away mid-show: a reload goes straight back on air,
// and the server hands the stage to the new connection without dropping the
// viewers (it holds a stage a few seconds for its key to come back).
const RESUME_KEY = 'stage.resume';
const MAX_NAME_LENGTH = 80;

const signedOut = byId('signed-out');
const signedIn = byId('signed-in');

const createForm = byId('create-form');
const nameInput = byId('stage-name');
const createButton = byId('create-stage');
const createError = byId('create-error');

const existingForm = byId('existing-form');
const existingId = byId('existing-id');
const existingKey = byId('existing-key');
const existingButton = byId('use-existing');
const existingError = byId('existing-error');

const performerName = byId('performer-name');
const dashboardLink = byId('dashboard-link');
const signOut = byId('sign-out');
const keyBox = byId('key-box');
const stageKey = byId('stage-key');
const keyWhipUrl = byId('key-whip-url');
const whipUrl = byId('whip-url');

const preview = byId('preview');
const previewAudioOnly = byId('preview-audio-only');
const onAirBadge = byId('on-air-badge');
const liveStatus = byId('live-status');
const mediaStatus = byId('media-status');
const goLiveButton = byId('go-live');
const endShowButton = byId('end-show');
const retryMedia = byId('retry-media');
const watching = byId('watching');
const recordingStatus = byId('recording-status');

/** @type {{id: string, name: string, key: string}|null} */
let performer = null;
/** @type {MediaStream|null} */
let media = null;
/**
 * The show in progress: its peer connection, once known its Location, and
 * whether the server has yet said this connection is the stage's live one.
 */
let live = null;
let ending = false;
let events = null;
let checkingShow = false;
// The stage as its events last described it.
let lastStage = null;

// signing in and out

function enterStage(stage, { newKey = false } = {}) {
  performer = stage;
  savePerformer(stage);

  const url = `${window.location.origin}/whip/${encodeURIComponent(stage.id)}`;
  performerName.textContent = stage.name;
  dashboardLink.href = `/stages/${encodeURIComponent(stage.id)}`;
  whipUrl.textContent = url;
  keyWhipUrl.textContent = url;
  stageKey.textContent = newKey ? stage.key : '';
  show(keyBox, newKey);

  show(signedOut, false);
  show(signedIn, true);
  setStatus('Off air', 'off');
  listen(stage.id);
  startPreview();
}

async function leaveStage() {
  if (live) {
    await endShow();
  }
  events?.close();
  events = null;
  stopPreview();
  performer = null;
  savePerformer(null);

  stageKey.textContent = '';
  show(keyBox, false);
  show(signedIn, false);
  show(signedOut, true);
  nameInput.focus();
}

createForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const name = nameInput.value.trim();
  if (!name) {
    showError(createError, 'Give your stage a name first.');
    return;
  }
  if (name.length > MAX_NAME_LENGTH) {
    showError(createError,
      `Keep the name under ${MAX_NAME_LENGTH + 1} characters.`);
    return;
  }

  createButton.disabled = true;
  try {
    const stage = await requestJson('/api/stages', { body: { name } });
    show(createError, false);
    nameInput.value = '';
    enterStage(
      { id: String(stage.id), name: stage.name, key: stage.key },
      { newKey: true });
  } catch (err) {
    showError(createError, err.message);
  } finally {
    createButton.disabled = false;
  }
});

existingForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  // People paste the WHIP or dashboard URL as often as the bare id.
  const id = existingId.value.trim().split('/').filter(Boolean).pop() ?? '';
  const key = existingKey.value.trim();
  if (!id || !key) {
    showError(existingError, 'Enter both the stage id and its key.');
    return;
  }

  existingButton.disabled = true;
  try {
    const path = `/api/stages/${encodeURIComponent(id)}`;
    const stage = await requestJson(path).catch((err) => {
      throw err.status === 404
        ? new Error('There is no stage with that id.')
        : err;
    });
    // Only the key's owner may list performances: a cheap key check.
    await requestJson(`${path}/performances`, { key }).catch((err) => {
      throw err.status === 401
        ? new Error('That key does not open this stage.')
        : err;
    });
    show(existingError, false);
    existingKey.value = '';
    enterStage({ id: String(stage.id), name: stage.name, key });
  } catch (err) {
    showError(existingError, err.message);
  } finally {
    existingButton.disabled = false;
  }
});

signOut.addEventListener('click', (event) => {
  event.preventDefault();
  leaveStage();
});

byId('key-saved').addEventListener('click', () => {
  stageKey.textContent = '';
  show(keyBox, false);
});

byId('copy-key').addEventListener('click', async (event) => {
  const button = event.currentTarget;
  try {
    await navigator.clipboard.writeText(stageKey.textContent);
    button.textContent = 'Copied';
  } catch {
    // Clipboard refused (permissions, old browser): select the text so a
    // manual copy is one keystroke away.
    window.getSelection().selectAllChildren(stageKey);
    button.textContent = 'Press Ctrl+C';
  }
});

// camera and microphone

async function startPreview() {
  stopPreview();
  show(retryMedia, false);
  updateButtons();
  if (!navigator.mediaDevices?.getUserMedia) {
    mediaStatus.textContent =
      'This browser cannot use a camera here (Stage needs https or ' +
      'localhost). You can still go live from OBS.';
    return;
  }

  mediaStatus.textContent = 'Asking for your camera and microphone…';
  let note = '';
  let stream = null;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: 640, height: 480 },
    });
  } catch (err) {
    // A musician without a camera can still go live.
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      note = `No camera (${mediaProblem(err)}): you will go live with ` +
        'sound only.';
    } catch (audioErr) {
      mediaStatus.textContent = 'Stage cannot use your microphone: ' +
        `${mediaProblem(audioErr)}. Allow access and try again.`;
      show(retryMedia, true);
      return;
    }
  }

  if (!performer) {
    // Signed out while the browser was asking.
    stream.getTracks().forEach((track) => track.stop());
    return;
  }
  media = stream;
  afterLoad(() => {
    if (media === stream) {
      preview.srcObject = stream;
      preview.play().catch(() => {});
    }
  });
  show(previewAudioOnly, media.getVideoTracks().length === 0);
  mediaStatus.textContent = note;
  updateButtons();
  if (sessionStorage.getItem(RESUME_KEY) === performer.id) {
    sessionStorage.removeItem(RESUME_KEY);
    goLive();
  }
}

function stopPreview() {
  media?.getTracks().forEach((track) => track.stop());
  media = null;
  preview.srcObject = null;
  show(previewAudioOnly, false);
}

function mediaProblem(err) {
  switch (err.name) {
    case 'NotAllowedError':
      return 'permission was refused';
    case 'NotFoundError':
      return 'none was found';
    case 'NotReadableError':
      return 'another app is using it';
    default:
      return err.message || err.name;
  }
}

retryMedia.addEventListener('click', startPreview);

// going live

async function goLive() {
  if (!performer || !media || live || ending) {
    return;
  }
  const pc = new RTCPeerConnection(peerConfig(iceServers()));
  live = { pc, location: null, seenLive: false };
  for (const track of media.getTracks()) {
    pc.addTransceiver(track, { direction: 'sendonly', streams: [media] });
  }
  pc.addEventListener('connectionstatechange', () => onConnectionState(pc));
  setStatus('Connecting…', 'connecting');
  updateButtons();

  const { id, key } = performer;
  try {
    const { location } = await publish(
      `/whip/${encodeURIComponent(id)}`, key, pc);
    if (live?.pc !== pc) {
      // The show was ended while the server was answering.
      hangUp(location, key).catch(() => {});
      return;
    }
    live.location = location;
    onConnectionState(pc);
    // The stage's events may have said it is live before this was known.
    if (lastStage) {
      followServer(lastStage);
    }
  } catch (err) {
    pc.close();
    if (live?.pc !== pc) {
      return;
    }
    live = null;
    const hint = err.status === 401
      ? ' Sign out and sign in again with the right key.'
      : '';
    setStatus(err.message + hint, 'error');
    updateButtons();
  }
}

function onConnectionState(pc) {
  if (live?.pc !== pc) {
    return;
  }
  switch (pc.connectionState) {
    case 'connected':
      setStatus('Live', 'live');
      break;
    case 'disconnected':
      setStatus('Connection unstable — reconnecting…', 'connecting');
      break;
    case 'failed':
      endShow('The connection to Stage was lost, so you are off air. ' +
        'Try again when ready.');
      break;
    default:
      setStatus('Connecting…', 'connecting');
  }
  updateButtons();
}

/**
 * End the show: DELETE the WHIP resource, then close the connection.
 *
 * @param {string} [message] status to show afterwards instead of "Off air"
 */
async function endShow(message) {
  const current = live;
  if (!current) {
    return;
  }
  live = null;
  ending = true;
  setStatus('Ending the show…', 'connecting');
  updateButtons();

  let problem = '';
  if (current.location) {
    try {
      await hangUp(current.location, performer?.key);
    } catch (err) {
      problem = ` (the server said: ${err.message})`;
    }
  }
  current.pc.close();
  ending = false;
  if (message) {
    setStatus(message, 'error');
  } else {
    setStatus(`Off air${problem}`, problem ? 'error' : 'off');
  }
  updateButtons();
}

goLiveButton.addEventListener('click', goLive);
endShowButton.addEventListener('click', () => endShow());

function updateButtons() {
  const onStage = live !== null || ending;
  show(goLiveButton, !onStage);
  goLiveButton.disabled = onStage || !media || !performer;
  show(endShowButton, onStage);
  endShowButton.disabled = !live;
  show(onAirBadge, live?.pc.connectionState === 'connected');
}

function setStatus(text, kind) {
  liveStatus.textContent = text;
  liveStatus.dataset.state = kind;
}

function showError(element, text) {
  element.textContent = text;
  show(element, true);
}

// the stage's own events: viewers and recording

function listen(id) {
  events?.close();
  lastStage = null;
  const url = `/api/stages/${encodeURIComponent(id)}/events`;
  const source = new EventSource(url);
  events = source;
  source.addEventListener('message', (event) => {
    const stage = JSON.parse(event.data);
    lastStage = stage;
    watching.textContent = String(stage.viewers ?? 0);
    showRecording(stage.recording ?? null, stage.last_recording ?? null);
    followServer(stage);
  });
  source.addEventListener('error', () => {
    // The stream broke. While on air, the server is asked at once how the
    // show stands: the process carrying it may have died (--workers), and
    // its end would otherwise only be heard when the stream is back.
    if (source === events && live?.seenLive) {
      checkShow(id);
    }
    // EventSource reconnects by itself unless the server refused it.
    if (source === events && source.readyState === EventSource.CLOSED) {
      setTimeout(() => {
        if (source === events && performer?.id === id) {
          listen(id);
        }
      }, EVENTS_RETRY_MS);
    }
  });
}

// Ask how the stage stands, a few times a second apart while the server
// cannot say (a worker being started again answers 503).
async function checkShow(id, tries = CHECK_TRIES) {
  if (checkingShow || !live?.seenLive || performer?.id !== id) {
    return;
  }
  checkingShow = true;
  try {
    followServer(await requestJson(`/api/stages/${encodeURIComponent(id)}`));
  } catch (err) {
    if (tries > 1) {
      setTimeout(() => checkShow(id, tries - 1), CHECK_PAUSE_MS);
    }
  } finally {
    checkingShow = false;
  }
}

// What the server says of the stage, against what this page believes.
function followServer(stage) {
  const mine = live?.location?.split('/').pop();
  if (!mine) {
    return;
  }
  if (stage.live && stage.publisher === mine) {
    live.seenLive = true;
    return;
  }
  // Another tab or an encoder published with the same key: the server gave
  // it the stage, so this connection is no longer on air.
  if (stage.live && stage.publisher && stage.publisher !== mine &&
      live.pc.connectionState === 'connected') {
    offAir('Your stage is now live from another connection (another ' +
      'tab or an encoder), so this page is off air.');
    return;
  }
  // The server ended this show without being asked from here: the worker
  // carrying it died, the key was renewed on the dashboard, or a WHIP DELETE
  // came from elsewhere. Until the server has said the show is live (it is
  // still connecting), or while it holds the stage for this page to come
  // back (a dropped connection), not being live says nothing of the kind.
  // The page does not go back on air by itself: the show may have been
  // ended on purpose, and its viewers were already moved on.
  if (live.seenLive && !stage.live && !stage.reconnecting) {
    offAir('Stage ended your show on its side, so you are off air. What ' +
      'was recorded is kept. Press Go live to start a new show.');
  }
}

// The server no longer takes this page's media: there is nothing to end.
function offAir(message) {
  const current = live;
  live = null;
  current.pc.close();
  setStatus(message, 'error');
  updateButtons();
}

function showRecording(recording, last) {
  const states = {
    recording: 'Recording',
    finishing: 'Saving the recording…',
    ready: 'Saved',
    empty: 'Nothing recorded',
  };
  if (!recording) {
    showLastRecording(last);
    return;
  }
  recordingStatus.dataset.state = recording.state;
  if (recording.state === 'failed') {
    recordingStatus.textContent = 'Recording failed: ' +
      (recording.error || 'unknown error') +
      '. The show goes on, but it is not being saved.';
  } else {
    recordingStatus.textContent = states[recording.state] ?? recording.state;
  }
}

// Off air: what became of the last show's recording, with the way to it.
function showLastRecording(last) {
  recordingStatus.replaceChildren();
  if (!last) {
    recordingStatus.textContent = '—';
    recordingStatus.dataset.state = 'none';
    return;
  }
  const saved = ['ready', 'truncated'].includes(last.state);
  const texts = {
    recording: 'Saving the last show…',
    finishing: 'Saving the last show…',
    empty: 'The last show recorded nothing',
    failed: 'The last show’s recording failed',
    deleted: 'The last show’s recording was deleted',
  };
  recordingStatus.dataset.state = saved ? 'ready' : last.state;
  if (!saved) {
    recordingStatus.textContent = texts[last.state] ?? '—';
    return;
  }
  const link = document.createElement('a');
  link.id = 'recording-link';
  link.href = last.dashboard;
  link.className = 'recording-link';
  link.textContent = 'Open in dashboard';
  recordingStatus.append('Last show saved', link);
}

// Leaving the page mid-show does not end it at once: this may be a reload,
// which comes back on air by itself. A tab that is really closed stops
// sending, and the server ends the show about ten seconds later.
window.addEventListener('pagehide', () => {
  if (live && performer) {
    sessionStorage.setItem(RESUME_KEY, performer.id);
  }
  live?.pc.close();
  live = null;
});

// start

async function resume(saved) {
  enterStage(saved);
  try {
    const stage = await requestJson(
      `/api/stages/${encodeURIComponent(saved.id)}`);
    if (performer?.id === saved.id && stage.name !== performer.name) {
      // Renamed on the server since this browser saved it.
      performer = { ...performer, name: stage.name };
      savePerformer(performer);
      performerName.textContent = stage.name;
    }
  } catch (err) {
    if (err.status === 404) {
      await leaveStage();
      showError(existingError,
        'Your saved stage no longer exists here. Create a new one.');
    }
  }
}

const saved = savedPerformer();
if (saved) {
  resume(saved);
} else {
  show(signedOut, true);
}
