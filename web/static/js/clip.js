// A clip's public page: the player, the performer's name, the play count
// and the downloads. While the clip is still being made, shows its progress.

import { requestJson } from './api.js';
import { byId, show } from './page.js';

const POLL_MS = 1000;

const root = byId('clip');
const clipId = root.dataset.clipId;
const url = `/api/clips/${encodeURIComponent(clipId)}`;

const making = byId('clip-making');
const progress = byId('clip-progress');
const error = byId('clip-error');
const player = byId('clip-player');
const video = byId('clip-video');
const plays = byId('clip-plays');
const length = byId('clip-length');
const mp4 = byId('download-mp4');
const recorded = byId('download-recorded');

let counted = false;

async function load() {
  let clip;
  try {
    clip = await requestJson(url);
  } catch (err) {
    error.textContent = err.message;
    show(error, true);
    return;
  }
  byId('clip-performer').textContent = clip.stage.name;
  if (clip.state === 'failed') {
    error.textContent = clip.error || 'This clip could not be made.';
    show(error, true);
    show(making, false);
    return;
  }
  if (clip.state !== 'ready') {
    progress.value = clip.progress;
    show(making, true);
    setTimeout(load, POLL_MS);
    return;
  }
  show(making, false);
  showClip(clip);
}

function showClip(clip) {
  video.poster = clip.poster;
  video.src = clip.recorded;
  mp4.href = `${clip.mp4}?download=1`;
  recorded.href = `${clip.recorded}?download=1`;
  showPlays(clip.plays);
  length.textContent = formatDuration(clip.duration);
  show(player, true);
}

// One play per page load, counted when the player first starts.
video.addEventListener('play', async () => {
  if (counted) {
    return;
  }
  counted = true;
  try {
    await requestJson(`${url}/plays`, { method: 'POST' });
    showPlays(Number(plays.dataset.count) + 1);
  } catch {
    // A missed count is not worth interrupting the viewer for.
  }
});

function showPlays(count) {
  plays.dataset.count = String(count);
  plays.textContent = count === 1 ? '1 play' : `${count} plays`;
}

function formatDuration(seconds) {
  const total = Math.round(seconds ?? 0);
  return `${Math.floor(total / 60)}:${String(total % 60).padStart(2, '0')}`;
}

load();
