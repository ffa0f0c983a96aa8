/*
 * The /demo page: connect with a subscriber token, show history and live notifications.
 * User data is only ever written with textContent. window.demoState mirrors what the page
 * saw, so browser tests can wait on it (page.wait_for_function) instead of sleeping.
 * In development a button mints a token itself (POST /demo/token).
 * Query parameters: token, transport (sse|ws), cursor, min_delay and max_delay (ms, backoff).
 */
(function () {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const state = (window.demoState = {
    status: 'idle', transport: document.body.dataset.transport || 'sse', unread: null,
    received: [], messages: [], history: [], statuses: [], errors: [], changes: [], counts: null,
  });
  let client = null;

  function log(text) {
    const li = document.createElement('li');
    li.textContent = new Date().toLocaleTimeString() + '  ' + text;
    const list = $('log');
    list.prepend(li);
    while (list.children.length > 100) list.lastElementChild.remove();
  }

  // Live views of the client's counters (enumerable, so page.evaluate serializes them).
  ['duplicates', 'disconnects', 'reconnects', 'resets'].forEach((name) => {
    Object.defineProperty(state, name, { enumerable: true, get: () => (client ? client.stats[name] : 0) });
  });
  Object.defineProperty(state, 'cursor', { enumerable: true, get: () => (client ? client.cursor : null) });

  function setStatus(status, info) {
    state.status = status;
    state.statuses.push(status);
    const el = $('status');
    el.className = 'status status-' + status;
    let text = status;
    if (status === 'open') text = 'live (' + (info.transport === 'ws' ? 'WebSocket' : 'SSE') + ')';
    if (status === 'reconnecting' && info.delay != null) text = 'reconnecting in ' + (info.delay / 1000).toFixed(1) + ' s';
    el.textContent = text;
    log(status + (info.cursor != null ? ' cursor=' + info.cursor : '') + (info.code ? ' code=' + info.code : ''));
    const connected = status !== 'closed' && status !== 'idle' && status !== 'unauthorized';
    $('connect').disabled = connected;
    $('disconnect').disabled = !connected;
    $('mark-all').disabled = !connected;
  }

  function setUnread(count) {
    state.unread = count;
    const badge = $('unread');
    badge.textContent = String(count);
    badge.classList.toggle('zero', count === 0);
  }

  function render(n, fresh) {
    const li = $('item-template').content.firstElementChild.cloneNode(true);
    li.dataset.id = n.id;
    li.classList.add(n.read ? 'read' : 'unread');
    if (fresh) li.classList.add('fresh');
    li.querySelector('.item-title').textContent = n.title || '';
    li.querySelector('.item-message').textContent = n.message;
    const meta = [n.created_at ? new Date(n.created_at).toLocaleString() : '', n.category, n.seq != null ? '#' + n.seq : ''];
    li.querySelector('.item-meta').textContent = meta.filter(Boolean).join(' · ');
    const priority = n.priority || 'normal';
    li.classList.add('priority-' + priority);
    li.querySelector('.item-priority').textContent = priority === 'normal' ? '' : priority;
    const actions = li.querySelector('.item-actions');
    (n.actions || []).forEach((action) => {
      // The service accepts only http(s) and relative URLs; checked again before it is a link.
      let url;
      try { url = new URL(action.url, location.href); } catch (err) { return; }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') return;
      const a = document.createElement('a');
      a.href = url.href;
      a.textContent = action.label;
      a.rel = 'noopener noreferrer';
      actions.appendChild(a);
    });
    li.querySelector('.mark-read').addEventListener('click', () => markRead([n.id]));
    li.querySelector('.archive').addEventListener('click', () => act(client.archive([n.id])));
    li.querySelector('.delete').addEventListener('click', () => act(client.remove(n.id)));
    if (n.user_id) $('user').textContent = 'for ' + n.user_id;
    $('empty').hidden = true;
    return li;
  }

  function showRead(ids, all) {
    document.querySelectorAll('#notifications .item').forEach((li) => {
      if (all || ids.indexOf(li.dataset.id) >= 0) li.classList.replace('unread', 'read');
    });
  }

  function act(done) {
    done.catch((err) => { state.errors.push(String(err)); log('failed: ' + err.message); });
  }

  /** A change made anywhere (this tab, another, a phone): the list follows it. */
  function showState(c) {
    state.changes.push(c.change);
    if (c.change === 'read') showRead(c.ids, c.all);
    document.querySelectorAll('#notifications .item').forEach((li) => {
      if (!c.all && c.ids.indexOf(li.dataset.id) < 0) return;
      if (c.change === 'unread') li.classList.replace('read', 'unread');
      if (c.change === 'archive' || c.change === 'delete') li.remove();
    });
  }

  function markRead(ids) {
    if (!client) return;
    const done = ids ? client.markRead(ids) : client.markAllRead();
    done.then(() => showRead(ids || [], !ids), (err) => { state.errors.push(String(err)); log('mark read failed: ' + err.message); });
  }

  function connect(token) {
    if (client) client.close();
    state.transport = document.querySelector('input[name=transport]:checked').value;
    const delays = {};
    if (params.get('min_delay')) delays.minDelay = Number(params.get('min_delay'));
    if (params.get('max_delay')) delays.maxDelay = Number(params.get('max_delay'));
    client = window.demoClient = Notify.connect(Object.assign({
      url: '',
      token: token,
      transport: state.transport,
      cursor: params.get('cursor'),
      onHistory(list) {
        const ul = $('notifications');
        ul.replaceChildren(...list.map((n) => render(n, false)));
        $('empty').hidden = list.length > 0;
        state.history = list.map((n) => n.id);
        log('history: ' + list.length + ' notifications');
      },
      onNotification(n) {
        $('notifications').prepend(render(n, true));
        state.received.push(n.id);
        state.messages.push(n.message);
          },
      onState(c) {
        showState(c);
        log(c.change + ': ' + (c.all ? 'all' : c.ids.length + ' ids') + ', unread ' + c.unread);
      },
      onCounts(counts) { state.counts = counts; },
      onReset(r) {
        log('reset (' + (r.reason || 'no reason') + '): reloading history');
          },
      onUnread: setUnread,
      onStatus: setStatus,
      onError(err) {
        state.errors.push(String(err && err.message));
        log('error: ' + (err && err.message));
      },
    }, delays));
  }

  $('connect-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token').value.trim();
    if (token) connect(token);
  });
  // Development only (the server renders #dev-token only then): mint a token, no curl needed.
  const devToken = $('dev-token');
  if (devToken) {
    $('dev-token-button').addEventListener('click', () => {
      fetch(devToken.dataset.url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ user_id: $('dev-user').value.trim() }),
      }).then((resp) => resp.json().then((body) => {
        if (!resp.ok) throw new Error((body.error && body.error.message) || 'HTTP ' + resp.status);
        $('token').value = body.token;
        log('dev token for ' + body.user_id);
        connect(body.token);
      })).catch((err) => { state.errors.push(String(err.message)); log('dev token failed: ' + err.message); });
    });
  }
  $('disconnect').addEventListener('click', () => { if (client) client.close(); });
  $('mark-all').addEventListener('click', () => markRead(null));
  document.querySelectorAll('input[name=transport]').forEach((input) => {
    input.addEventListener('change', () => {
      state.transport = input.value;
      if (client && client.status !== 'closed') client.setTransport(input.value);
    });
  });

  const token = params.get('token');
  if (token) {
    // Keep the token out of the address bar (history, screenshots, shoulder surfers).
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? '?' + rest : ''));
    $('token').value = token;
    connect(token);
  }
})();
