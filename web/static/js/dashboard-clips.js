// The dashboard's clips: a player with a scrubber to mark a start and an
// end, the clips being made (with progress) and made, deleting clips and
// recordings, and the disk the stage uses.

import { requestJson } from './api.js';
import { byId, show } from './page.js';

const POLL_MS = 1000;

const editor = byId('clip-editor');
const video = byId('editor-video');
const scrubber = byId('editor-scrubber');
const marks = byId('editor-marks');
const playButton = byId('editor-play');
const position = byId('editor-position');
const startText = byId('clip-start');
const endText = byId('clip-end');
const lengthText = byId('clip-length');
const makeButton = byId('make-clip');
const making = byId('clip-making');
const progress = byId('clip-progress');
const clipError = byId('clip-error');
const list = byId('clips');
const noClips = byId('no-clips');
const disk = byId('stage-disk');

let performanceBase = null; // /api/performances/{id} of the recording in the editor
let start = 0;
let end = null;
let pollTimer = null;
let currentStage = null;
let onRecordingsChange = () => {};

/**
 * Buttons for one recording in the performances table.
 *
 * @param {string} stageId
 * @param {{url: string}} recording
 * @param {() => void} onChange called after the recording was deleted
 * @returns {HTMLElement[]}
 */
export function recordingActions(stageId, recording, onChange) {
  const performance = recording.url.replace(/\/recording$/, '');
  const clip = button('Make a clip', () => openEditor(recording.url, performance));
  const remove = button('Delete', async () => {
    if (!window.confirm('Delete this recording? Its clips stay.')) {
      return;
    }
    try {
      await requestJson(recording.url, { method: 'DELETE' });
      if (performanceBase === performance) {
        closeEditor();
      }
      onChange();
    } catch (err) {
      window.alert(err.message);
    }
  });
  remove.classList.add('delete-recording');
  clip.classList.add('open-editor');
  return [clip, remove];
}

function button(text, onClick) {
  const element = document.createElement('button');
  element.type = 'button';
  element.className = 'button button-small';
  element.textContent = text;
  element.addEventListener('click', onClick);
  return element;
}

// the editor

function openEditor(url, performance) {
  performanceBase = performance;
  start = 0;
  end = null;
  video.poster = `${performance}/poster`;
  video.src = url;
  show(clipError, false);
  show(editor, true);
  showMarks();
  editor.scrollIntoView({ behavior: 'smooth', block: 'start' });
}

function closeEditor() {
  video.pause();
  video.removeAttribute('src');
  video.load();
  performanceBase = null;
  show(editor, false);
}

video.addEventListener('loadedmetadata', () => {
  scrubber.max = String(video.duration);
  end = video.duration;
  showMarks();
});

video.addEventListener('timeupdate', () => {
  scrubber.value = String(video.currentTime);
  position.textContent = formatTime(video.currentTime);
});

video.addEventListener('play', () => { playButton.textContent = 'Pause'; });
video.addEventListener('pause', () => { playButton.textContent = 'Play'; });

scrubber.addEventListener('input', () => {
  video.currentTime = Number(scrubber.value);
  position.textContent = formatTime(video.currentTime);
});

playButton.addEventListener('click', () => {
  if (video.paused) {
    video.play();
  } else {
    video.pause();
  }
});

byId('mark-start').addEventListener('click', () => {
  start = video.currentTime;
  showMarks();
});

byId('mark-end').addEventListener('click', () => {
  end = video.currentTime;
  showMarks();
});

byId('close-editor').addEventListener('click', closeEditor);

// The marks, as text and as a band behind the scrubber. The band is placed
// through the CSSOM, which a strict style-src allows (a style attribute in
// the markup it would not).
function showMarks() {
  startText.textContent = formatTime(start);
  endText.textContent = end === null ? '—' : formatTime(end);
  const length = end === null ? null : end - start;
  lengthText.textContent = length === null
    ? ''
    : length > 0 ? `${length.toFixed(1)} s` : 'the end is not after the start';
  lengthText.dataset.valid = String(length !== null && length > 0);

  const duration = Number(scrubber.max);
  const share = (t) => Math.min(1, Math.max(0, t / duration));
  const visible = duration > 0 && length !== null && length > 0;
  show(marks, visible);
  if (visible) {
    marks.style.left = `${share(start) * 100}%`;
    marks.style.width = `${(share(end) - share(start)) * 100}%`;
  }
}

// The server checks the marks too; its sentence is shown as it is.
makeButton.addEventListener('click', async () => {
  if (!performanceBase) {
    return;
  }
  makeButton.disabled = true;
  show(clipError, false);
  try {
    await requestJson(`${performanceBase}/clips`, {
      body: { start, end: end ?? start },
    });
    await refreshClips(currentStage, onRecordingsChange);
  } catch (err) {
    clipError.textContent = err.message;
    show(clipError, true);
  } finally {
    makeButton.disabled = false;
  }
});

// the list of clips, and the disk used

/**
 * Reload the stage's clips and disk use; polls while a clip is being made.
 *
 * @param {string} stageId
 * @param {() => void} onChange called when a recording is deleted
 */
export async function refreshClips(stageId, onChange) {
  currentStage = stageId;
  onRecordingsChange = onChange;
  clearTimeout(pollTimer);
  const base = `/api/stages/${encodeURIComponent(stageId)}`;
  let clips;
  try {
    const [answer, storage] = await Promise.all([
      requestJson(`${base}/clips`),
      requestJson(`${base}/storage`),
    ]);
    clips = answer.clips;
    disk.textContent = formatSize(storage.bytes);
  } catch {
    return;
  }
  list.replaceChildren(...clips.map(clipItem));
  show(noClips, clips.length === 0);

  const busy = clips.filter((c) => ['queued', 'exporting'].includes(c.state));
  show(making, busy.length > 0);
  if (busy.length > 0) {
    progress.value = busy[0].progress;
    pollTimer = setTimeout(() => refreshClips(stageId, onChange), POLL_MS);
  }
}

function clipItem(clip) {
  const item = document.createElement('li');
  item.className = 'clip';
  item.dataset.id = clip.id;
  item.dataset.state = clip.state;

  if (clip.poster) {
    const image = document.createElement('img');
    image.src = clip.poster;
    image.alt = '';
    item.append(image);
  }
  const what = document.createElement('span');
  what.textContent = `${formatTime(clip.start)}–${formatTime(clip.end)}`;
  item.append(what);

  if (clip.state === 'ready') {
    const link = document.createElement('a');
    link.href = clip.page;
    link.textContent = 'Public page';
    const plays = document.createElement('span');
    plays.className = 'muted';
    plays.textContent = `${formatPlays(clip.plays)} · ${formatSize(clip.bytes)}`;
    item.append(link, plays);
  } else {
    const state = document.createElement('span');
    state.className = 'muted';
    state.textContent = clip.state === 'failed'
      ? clip.error
      : `Making… ${Math.round(clip.progress * 100)} %`;
    item.append(state);
  }
  if (['ready', 'failed'].includes(clip.state)) {
    item.append(button('Delete', async () => {
      try {
        await requestJson(`/api/clips/${clip.id}`, { method: 'DELETE' });
      } catch (err) {
        window.alert(err.message);
      }
      refreshClips(currentStage, onRecordingsChange);
    }));
  }
  return item;
}

function formatTime(seconds) {
  const minutes = Math.floor(seconds / 60);
  const rest = (seconds - minutes * 60).toFixed(1).padStart(4, '0');
  return `${minutes}:${rest}`;
}

function formatPlays(count) {
  return count === 1 ? '1 play' : `${count} plays`;
}

// Small figures in kB: a short clip must visibly change the disk figure.
function formatSize(bytes) {
  const value = bytes ?? 0;
  if (value < 1e6) {
    return `${Math.ceil(value / 1e3)} kB`;
  }
  if (value < 1e9) {
    return `${(value / 1e6).toFixed(1)} MB`;
  }
  return `${(value / 1e9).toFixed(2)} GB`;
}
