// Home page: what is live now, refreshed while the page is visible.

import { requestJson } from './api.js';
import { byId, show } from './page.js';

const REFRESH_MS = 10000;

const list = byId('live-stages');
const loading = byId('live-loading');
const empty = byId('live-empty');
const error = byId('live-error');
const count = byId('live-count');

let timer = null;

async function refresh() {
  clearTimeout(timer);
  try {
    const { stages } = await requestJson('/api/stages');
    render(stages.filter((stage) => stage.live !== false));
    show(error, false);
  } catch (err) {
    error.textContent = `Could not load live stages: ${err.message}`;
    show(error, true);
  } finally {
    show(loading, false);
    if (document.visibilityState === 'visible') {
      timer = setTimeout(refresh, REFRESH_MS);
    }
  }
}

function render(stages) {
  // Busiest first: a crowd draws a crowd.
  stages.sort((a, b) => (b.viewers ?? 0) - (a.viewers ?? 0));
  list.replaceChildren(...stages.map(stageItem));
  count.textContent = stages.length > 0 ? String(stages.length) : '';
  show(list, stages.length > 0);
  show(empty, stages.length === 0);
}

function stageItem(stage) {
  const item = document.createElement('li');
  item.className = 'stage-item';

  const link = document.createElement('a');
  link.className = 'stage-link';
  link.href = `/watch?stage=${encodeURIComponent(stage.id)}`;

  const name = document.createElement('span');
  name.className = 'stage-item-name';
  name.textContent = stage.name;

  const viewers = document.createElement('span');
  viewers.className = 'stage-item-viewers';
  viewers.textContent = `${stage.viewers ?? 0} watching`;

  link.append(name, viewers);
  item.append(link);
  return item;
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') {
    refresh();
  } else {
    clearTimeout(timer);
  }
});

refresh();
