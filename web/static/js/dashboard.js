// Artist dashboard: all-time views and every performance with its
// recording. Asks for the stage key once; the server then keeps an
// HttpOnly session cookie, which also opens the download links.

import { requestJson } from './api.js';
import { byId, savedPerformer, savePerformer, show } from './page.js';
import { recordingActions, refreshClips } from './dashboard-clips.js';

const RELOAD_DELAY_MS = 1000;
// While a show is live its numbers and chart are refreshed at most this often.
const LIVE_RELOAD_MS = 2000;
const COLUMNS = 10;

const root = byId('dashboard');
const stageId = root.dataset.stageId;
const base = `/api/stages/${encodeURIComponent(stageId)}`;

const signInForm = byId('sign-in-form');
const keyInput = byId('key');
const signInButton = byId('sign-in');
const signInError = byId('sign-in-error');
const loading = byId('dashboard-loading');
const loadError = byId('dashboard-error');
const body = byId('dashboard-body');

const nameHeading = byId('dashboard-name');
const liveCell = byId('stage-live');
const viewersCell = byId('stage-viewers');
const viewsCell = byId('stage-views');
const countCell = byId('performance-count');
const table = byId('performances');
const rows = byId('performance-rows');
const empty = byId('no-performances');
const rotateButton = byId('rotate-key');
const rotateError = byId('rotate-error');
const newKeyBox = byId('new-key-box');
const newKeyText = byId('new-key');

let events = null;
let lastShape = '';
let reloadTimer = null;
let liveReloadAt = 0;

async function load() {
  show(loading, true);
  try {
    const [{ performances }, stage] = await Promise.all([
      requestJson(`${base}/performances`),
      requestJson(base),
    ]);
    show(signInForm, false);
    show(loadError, false);
    showStage(stage);
    render(performances);
    show(body, true);
    refreshClips(stageId, reloadPerformances);
    listen();
  } catch (err) {
    if (err.status === 401) {
      askForKey();
    } else {
      loadError.textContent = `Could not load this stage: ${err.message}`;
      show(loadError, true);
    }
  } finally {
    show(loading, false);
  }
}

function askForKey() {
  const saved = savedPerformer();
  if (saved && saved.id === stageId && !keyInput.value) {
    keyInput.value = saved.key;
  }
  show(body, false);
  show(signInForm, true);
  (keyInput.value ? signInButton : keyInput).focus();
}

signInForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) {
    showSignInError('Enter the key you got when you created the stage.');
    return;
  }

  signInButton.disabled = true;
  try {
    await requestJson(`${base}/session`, { body: { key } });
    show(signInError, false);
    keyInput.value = '';
    await load();
  } catch (err) {
    showSignInError(err.status === 401
      ? 'That key does not open this stage.'
      : err.message);
  } finally {
    signInButton.disabled = false;
  }
});

function showSignInError(text) {
  signInError.textContent = text;
  show(signInError, true);
}

// the key

rotateButton.addEventListener('click', async () => {
  const sure = window.confirm(
    'Make a new key? The old one stops working now, and a show streamed ' +
    'with it goes off air.');
  if (!sure) {
    return;
  }
  rotateButton.disabled = true;
  show(rotateError, false);
  try {
    // The session cookie authorises this; the answer renews it.
    const { key } = await requestJson(`${base}/key`, { method: 'POST' });
    newKeyText.textContent = key;
    show(newKeyBox, true);
    const saved = savedPerformer();
    if (saved && saved.id === stageId) {
      savePerformer({ ...saved, key });
    }
  } catch (err) {
    rotateError.textContent = `The key was not changed: ${err.message}`;
    show(rotateError, true);
  } finally {
    rotateButton.disabled = false;
  }
});

// the stage

function showStage(stage) {
  nameHeading.textContent = stage.name;
  document.title = `${stage.name} — Stage dashboard`;
  // A stage held for its performer to come back is not live, not off air.
  const now = stage.live ? 'live' : stage.reconnecting ? 'reconnecting' : 'off';
  const words = { live: 'Live', reconnecting: 'Reconnecting…', off: 'Off air' };
  liveCell.textContent = words[now];
  liveCell.dataset.state = now;
  viewersCell.textContent = String(stage.viewers ?? 0);
  viewsCell.textContent = String(stage.views ?? 0);
}

// Live counts arrive as events; the performance list is reloaded only when
// a show starts or ends or its recording changes state.
function listen() {
  if (events) {
    return;
  }
  events = new EventSource(`${base}/events`);
  events.addEventListener('message', (event) => {
    const stage = JSON.parse(event.data);
    showStage(stage);

    const shape = `${stage.live}/${stage.recording?.state ?? ''}`;
    if (lastShape && shape !== lastShape) {
      clearTimeout(reloadTimer);
      reloadTimer = setTimeout(reloadPerformances, RELOAD_DELAY_MS);
    } else if (stage.live && Date.now() >= liveReloadAt) {
      // Someone came or went: the live show's numbers and chart follow.
      liveReloadAt = Date.now() + LIVE_RELOAD_MS;
      setTimeout(reloadPerformances, LIVE_RELOAD_MS);
    }
    lastShape = shape;
  });
}

async function reloadPerformances() {
  try {
    const { performances } = await requestJson(`${base}/performances`);
    render(performances);
    refreshClips(stageId, reloadPerformances);
  } catch (err) {
    if (err.status === 401) {
      askForKey();
    }
  }
}

// the performances table

function render(performances) {
  rows.replaceChildren(...performances.flatMap((performance) => [
    performanceRow(performance),
    detailRow(performance),
  ]));
  countCell.textContent = String(performances.length);
  show(table, performances.length > 0);
  show(empty, performances.length === 0);
}

function performanceRow(performance) {
  const row = document.createElement('tr');
  row.className = 'performance';
  row.dataset.id = performance.id;

  const started = document.createElement('time');
  const date = parseTime(performance.started_at);
  started.dateTime = date ? date.toISOString() : '';
  started.textContent = date
    ? date.toLocaleString(undefined, {
      dateStyle: 'medium', timeStyle: 'short',
    })
    : '—';

  const recording = performance.recording;
  row.append(
    cell(started),
    cell(performance.ended_at || performance.duration !== null
      ? formatDuration(performance.duration)
      : 'on now', 'num'),
    cell(String(performance.views ?? 0), 'num'),
    cell(String(performance.peak_viewers ?? 0), 'num'),
    cell(String(performance.visits ?? 0), 'num'),
    cell(String(performance.nexted ?? 0), 'num'),
    cell(formatDuration(performance.average_watch_seconds), 'num'),
    cell(formatDuration(performance.watch_seconds), 'num'),
    cell(formatSize(recording?.bytes), 'num'),
    cell(recordingCell(recording), 'recording-cell'),
  );
  return row;
}

// The chart of watching-now (an SVG the server draws) and the export.
function detailRow(performance) {
  const row = document.createElement('tr');
  row.className = 'performance-detail';
  row.dataset.id = performance.id;
  const td = document.createElement('td');
  td.colSpan = COLUMNS;

  const figure = document.createElement('figure');
  figure.className = 'chart';
  const image = document.createElement('img');
  const live = !performance.ended_at;
  // A live show's chart changes: a new address makes the browser fetch it.
  image.src = live
    ? `${performance.chart_url}?at=${Date.now()}`
    : performance.chart_url;
  image.alt = `Watching now over the show: peak ${performance.peak_viewers}`
    + `, ${performance.visits} visits, ${performance.views} views.`;
  image.width = 720;
  image.height = 200;
  image.loading = 'lazy';
  figure.append(image);

  const caption = document.createElement('figcaption');
  const visitors = document.createElement('span');
  visitors.textContent = (performance.visitors === 1
    ? '1 browser came' : `${performance.visitors} browsers came`)
    + (live ? `, ${performance.watching} watching now. ` : '. ');
  const csv = document.createElement('a');
  csv.className = 'export';
  csv.href = performance.watches_url;
  csv.download = '';
  csv.textContent = 'Download the watches (CSV)';
  caption.append(visitors, csv);
  figure.append(caption);

  td.append(figure);
  row.append(td);
  return row;
}

function cell(content, className) {
  const td = document.createElement('td');
  if (className) {
    td.className = className;
  }
  td.append(content);
  return td;
}

function recordingCell(recording) {
  if (['ready', 'truncated'].includes(recording?.state) && recording.url) {
    const link = document.createElement('a');
    link.className = 'download';
    link.href = recording.url;
    link.download = '';
    link.textContent = 'Download';
    const actions = document.createElement('span');
    actions.className = 'recording-actions';
    actions.append(link, ...recordingActions(stageId, recording,
      reloadPerformances));
    return actions;
  }
  const texts = {
    recording: 'Recording in progress',
    finishing: 'Finishing…',
    ready: 'Ready',
    failed: 'Failed',
    empty: 'No media',
    deleted: 'Deleted',
  };
  const span = document.createElement('span');
  span.className = 'recording-state';
  span.dataset.state = recording?.state ?? 'none';
  span.textContent = recording
    ? texts[recording.state] ?? recording.state
    : 'No recording';
  return span;
}

// Times without an offset are UTC by contract; without the "Z" the browser
// would read them as local time.
function parseTime(text) {
  if (!text) {
    return null;
  }
  const iso = /([zZ]|[+-]\d\d:?\d\d)$/.test(text) ? text : `${text}Z`;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? null : date;
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) {
    return '—';
  }
  const total = Math.round(seconds);
  const minutes = Math.floor(total / 60);
  return `${minutes}:${String(total % 60).padStart(2, '0')}`;
}

function formatSize(bytes) {
  if (bytes === null || bytes === undefined) {
    return '—';
  }
  const megabytes = bytes / 1e6;
  return megabytes > 0 && megabytes < 0.1
    ? '< 0.1 MB'
    : `${megabytes.toFixed(1)} MB`;
}

load();
