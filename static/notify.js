/*
 * notify.js: a dependency-free browser client for the notification service (ES2017, no build).
 *
 *   const client = Notify.connect({
 *     url: '',                       // service origin; '' = this page's origin
 *     token: '...',                  // subscriber token from POST /api/tokens
 *     transport: 'sse',              // or 'ws'
 *     getToken: async () => '...',   // optional: a fresh token when the current one expires
 *     onNotification(n, meta) {}, onState(change) {}, onReset(r) {}, onHistory(list) {},
 *     onStatus(status, info) {}, onUnread(count) {}, onCounts(counts) {}, onError(err) {},
 *     ack: true,                     // tell the service what arrived (batched, once a second at most)
 *   });
 *   client.markRead([id]); client.markAllRead(); client.markSeen();  // the badge: all seen
 *   client.markUnread([id]); client.archive([id]); client.unarchive([id]); client.remove(id);
 *   client.setTransport('ws'); client.close();
 *
 * Without a cursor it first loads the newest page of history (onHistory) and resumes after its
 * newest cursor, so nothing created meanwhile is lost. It keeps the last cursor, reconnects
 * itself after any drop (capped exponential backoff with jitter, resuming with last_event_id),
 * drops notifications whose id it has already seen, and keeps the inbox counts
 * ({unseen, unread, total}) in step with every state change made anywhere (onState: the
 * change, its ids or all, and the counts after it), in the same cursor order as notifications.
 * Receipts: the ids of notifications that arrived are acknowledged in one message per
 * second at most (a WebSocket frame, or POST /api/me/ack for SSE).
 * Statuses: loading, connecting, open, reconnecting, refreshing, unauthorized, closed.
 */
(function (root) {
  'use strict';

  const DEFAULTS = {
    url: '',
    token: '',
    transport: 'sse',
    cursor: null,
    getToken: null,
    historyLimit: 50,
    minDelay: 500, // ms, first reconnect delay
    maxDelay: 15000, // ms, cap of the exponential backoff
    seenLimit: 2000, // notification ids remembered to drop duplicates
    ack: true, // acknowledge what arrived (delivery receipts)
    ackInterval: 1000, // ms: at most one acknowledgement per this
  };
  const NOOP = function () {};
  const CALLBACKS = ['onNotification', 'onState', 'onReset', 'onHistory', 'onStatus', 'onUnread', 'onCounts', 'onError'];
  const CHANGES = ['read', 'seen', 'unread', 'archive', 'unarchive'];
  const MAX_ACK_IDS = 1000;
  const WS_TOKEN_EXPIRED = 4401;

  class AuthError extends Error {}

  /** The cursor as the server wrote it: JSON.parse would round integers above 2^53. */
  function wsCursor(text, parsed) {
    const match = /^\{"type":"(?:notification","id|state","seq)":(\d+)[,}]/.exec(text);
    return match ? match[1] : String(parsed);
  }

  class Client {
    constructor(options) {
      const opts = Object.assign({}, DEFAULTS, options || {});
      CALLBACKS.forEach((name) => { opts[name] = typeof opts[name] === 'function' ? opts[name] : NOOP; });
      this.opts = opts;
      this.base = String(opts.url || '').replace(/\/+$/, '');
      this.token = opts.token;
      this.transport = opts.transport === 'ws' ? 'ws' : 'sse';
      this.cursor = opts.cursor == null || opts.cursor === '' ? null : String(opts.cursor);
      this.unread = null;
      this.counts = null; // {unseen, unread, total} once known
      this._acks = [];
      this._ackTimer = null;
      this._connection = null; // the SSE stream's id, named in its receipts
      this.status = 'idle';
      this.stats = { received: 0, duplicates: 0, disconnects: 0, reconnects: 0, resets: 0 };
      this._seen = new Set();
      this._source = null;
      this._timer = null;
      this._attempt = 0;
      this._closed = false;
      this._opened = false;
      this._reloading = null; // notifications held back while history reloads after a reset
      this._online = () => { if (this.status === 'reconnecting') this._reconnectNow(); };
      if (typeof root.addEventListener === 'function') root.addEventListener('online', this._online);
      this._start();
    }

    // -- public API ---------------------------------------------------------------------
    markRead(ids) { return this.change('read', ids); }

    markAllRead() { return this.change('read', null); }

    /** The inbox was shown: clears the unseen badge (all, or the given ids). */
    markSeen(ids) { return this.change('seen', ids || null); }

    markUnread(ids) { return this.change('unread', ids); }

    archive(ids) { return this.change('archive', ids); }

    unarchive(ids) { return this.change('unarchive', ids); }

    /** Delete one notification from the user's inbox (and counts). */
    remove(id) {
      return this._fetch('/api/me/notifications/' + encodeURIComponent(id), { method: 'DELETE' });
    }

    /** One of CHANGES for ``ids`` (an array), or for all when ``ids`` is null. */
    change(change, ids) {
      if (CHANGES.indexOf(change) < 0) return Promise.reject(new Error('unknown change ' + change));
      const body = ids == null ? { all: true } : { ids: Array.from(ids) };
      if (body.ids && !body.ids.length) return Promise.resolve({ updated: 0 });
      const ws = this._source;
      if (this.transport === 'ws' && ws && ws.readyState === 1) {
        ws.send(JSON.stringify(Object.assign({ type: change }, body)));
        return Promise.resolve({ sent: true });
      }
      return this._fetch('/api/me/' + change, { method: 'POST', body: JSON.stringify(body) });
    }

    history(before) {
      let path = '/api/me/notifications?limit=' + encodeURIComponent(this.opts.historyLimit);
      if (before) path += '&before=' + encodeURIComponent(before);
      return this._fetch(path);
    }

    refreshUnread() { return this.refreshCounts(); }

    refreshCounts() {
      return this._fetch('/api/me/counts').then((body) => this._setCounts(body));
    }

    setTransport(transport) {
      this.transport = transport === 'ws' ? 'ws' : 'sse';
      if (!this._closed) this.reconnect();
    }

    /** Reconnect now (keeping the cursor unless one is given), e.g. after a transport switch. */
    reconnect(options) {
      if (options && options.cursor !== undefined) this.cursor = options.cursor == null ? null : String(options.cursor);
      this._reconnectNow();
    }

    close() {
      this._closed = true;
      clearTimeout(this._timer);
      this._flushAcks();
      this._drop();
      if (typeof root.removeEventListener === 'function') root.removeEventListener('online', this._online);
      this._setStatus('closed');
    }

    // -- lifecycle ----------------------------------------------------------------------
    async _start() {
      try {
        if (this.cursor == null) {
          this._setStatus('loading');
          await this._loadHistory();
        }
        if (this.unread == null) await this.refreshUnread();
        if (!this._closed) this._open();
      } catch (err) {
        this._failed(err, () => this._start());
      }
    }

    async _loadHistory() {
      const page = await this.history();
      const list = Array.isArray(page.notifications) ? page.notifications : [];
      let newest = 0;
      list.forEach((n) => {
        this._remember(n.id);
        if (typeof n.seq === 'number' && n.seq > newest) newest = n.seq;
      });
      if (this.cursor == null) this.cursor = String(newest); // 0 = "from the start"
      this._call('onHistory', list, page);
      return list;
    }

    _open() {
      clearTimeout(this._timer);
      this._drop();
      if (this._closed) return;
      this._opened = false;
      this._setStatus('connecting', { transport: this.transport });
      if (this.transport === 'ws') this._openWebSocket();
      else this._openEventSource();
    }

    _openEventSource() {
      let url = this.base + '/stream?token=' + encodeURIComponent(this.token);
      if (this.cursor != null) url += '&last_event_id=' + encodeURIComponent(this.cursor);
      const es = new EventSource(url);
      this._source = es;
      const mine = (fn) => (event) => { if (this._source === es) fn(event); };
      es.onopen = mine(() => this._isOpen());
      es.addEventListener('notification', mine((e) => this._notification(JSON.parse(e.data), e.lastEventId)));
      es.addEventListener('connected', mine((e) => { this._connection = JSON.parse(e.data).connection || null; }));
      es.addEventListener('state', mine((e) => this._state(JSON.parse(e.data), e.lastEventId)));
      es.addEventListener('reset', mine((e) => this._reset(JSON.parse(e.data))));
      es.addEventListener('expired', mine(() => this._expired()));
      // EventSource would retry on its own, without backoff; we close it and retry ourselves.
      es.onerror = mine(() => this._lost());
    }

    _openWebSocket() {
      const origin = new URL(this.base || root.location.origin, root.location.href);
      let url = (origin.protocol === 'https:' ? 'wss://' : 'ws://') + origin.host + origin.pathname.replace(/\/+$/, '');
      url += '/ws?token=' + encodeURIComponent(this.token);
      if (this.cursor != null) url += '&last_event_id=' + encodeURIComponent(this.cursor);
      const ws = new WebSocket(url);
      this._source = ws;
      ws.onopen = () => { if (this._source === ws) this._isOpen(); };
      ws.onmessage = (event) => {
        if (this._source !== ws) return;
        let frame;
        try { frame = JSON.parse(event.data); } catch (err) { this._call('onError', err); return; }
        if (frame.type === 'notification') this._notification(frame.notification, wsCursor(event.data, frame.id));
        else if (frame.type === 'state') this._state(frame, wsCursor(event.data, frame.seq));
        else if (frame.type === 'reset') this._reset(frame);
        else if (frame.type === 'error') this._call('onError', new Error(frame.code + ': ' + frame.message));
      };
      ws.onclose = (event) => {
        if (this._source !== ws) return;
        if (event.code === WS_TOKEN_EXPIRED) this._expired();
        else this._lost({ code: event.code, reason: event.reason });
      };
    }

    _isOpen() {
      this._opened = true;
      this._attempt = 0;
      this._setStatus('open', { transport: this.transport, cursor: this.cursor });
    }

    /** The connection dropped or never opened: retry with backoff (after checking the token). */
    _lost(info) {
      const wasOpen = this._opened;
      this._opened = false;
      this._drop();
      if (this._closed) return;
      if (wasOpen) this.stats.disconnects += 1;
      const delay = this._nextDelay();
      this._setStatus('reconnecting', Object.assign({ delay: delay }, info || {}));
      const retry = () => {
        if (this._closed || this._source) return;
        clearTimeout(this._timer);
        this._timer = setTimeout(() => { this.stats.reconnects += 1; this._open(); }, delay);
      };
      if (wasOpen) { retry(); return; }
      // Never got in: to EventSource an expired token looks like any other failure, so ask.
      this._fetch('/api/me/unread-count').then(retry, (err) => {
        if (err instanceof AuthError) this._expired(); else retry();
      });
    }

    _failed(err, retry) {
      if (this._closed) return;
      if (err instanceof AuthError) { this._expired(); return; }
      this._call('onError', err);
      this._setStatus('reconnecting', { delay: this._nextDelay(), error: String(err && err.message) });
      this._timer = setTimeout(retry, this._pendingDelay);
    }

    _expired() {
      this._drop();
      if (this._closed) return;
      if (typeof this.opts.getToken !== 'function') {
        this._setStatus('unauthorized');
        return;
      }
      this._setStatus('refreshing', { delay: this._nextDelay() });
      this._timer = setTimeout(() => {
        Promise.resolve()
          .then(() => this.opts.getToken())
          .then((token) => {
            if (!token) throw new Error('getToken() returned no token');
            this.token = token;
            if (this.unread == null) this._start(); else this._open();
          })
          .catch((err) => this._failed(err, () => this._expired()));
      }, this._attempt > 1 ? this._pendingDelay : 0);
    }

    _reconnectNow() {
      if (this._closed) return;
      this._attempt = 0;
      this._open();
    }

    _nextDelay() {
      const cap = Math.min(this.opts.maxDelay, this.opts.minDelay * Math.pow(2, this._attempt));
      this._attempt = Math.min(this._attempt + 1, 30);
      this._pendingDelay = Math.round(cap / 2 + Math.random() * cap / 2); // "equal jitter"
      return this._pendingDelay;
    }

    _drop() {
      const source = this._source;
      this._source = null;
      if (source) {
        try { source.close(); } catch (err) { /* already closed */ }
      }
    }

    // -- events -------------------------------------------------------------------------
    _notification(n, cursor) {
      if (cursor) this.cursor = cursor;
      if (this._reloading) { this._reloading.push([n, cursor]); return; }
      if (!n || !n.id) return;
      if (this._seen.has(n.id)) { this.stats.duplicates += 1; return; }
      this._remember(n.id);
      this.stats.received += 1;
      this._ack(n.id);
      if (this.counts) {
        const c = this.counts;
        this._setCounts({ unseen: c.unseen + (n.seen ? 0 : 1), unread: c.unread + (n.read ? 0 : 1), total: c.total + 1 });
      }
      this._call('onNotification', n, { cursor: cursor || null });
    }

    _state(body, cursor) {
      if (cursor) this.cursor = cursor;
      if (typeof body.unread === 'number') this._setCounts(body);
      this._call('onState', {
        change: body.change, ids: body.ids || [], all: !!body.all,
        unseen: body.unseen, unread: body.unread, total: body.total,
      });
    }

    _ack(id) {
      if (!this.opts.ack) return;
      this._acks.push(id);
      if (this._acks.length >= MAX_ACK_IDS) this._flushAcks();
      else if (!this._ackTimer) this._ackTimer = setTimeout(() => this._flushAcks(), this.opts.ackInterval);
    }

    /** One receipt for everything that arrived since the last: a frame, or one POST. */
    _flushAcks() {
      clearTimeout(this._ackTimer);
      this._ackTimer = null;
      const ids = this._acks.splice(0, MAX_ACK_IDS);
      if (!ids.length) return;
      const ws = this._source;
      if (this.transport === 'ws' && ws && ws.readyState === 1) {
        ws.send(JSON.stringify({ type: 'ack', ids: ids }));
        return;
      }
      const body = this._connection ? { ids: ids, connection: this._connection } : { ids: ids };
      this._fetch('/api/me/ack', { method: 'POST', body: JSON.stringify(body) }).catch((err) => this._call('onError', err));
    }

    async _reset(body) {
      this.stats.resets += 1;
      this.cursor = body && body.cursor != null ? String(body.cursor) : null;
      this._reloading = this._reloading || [];
      this._call('onReset', { reason: body && body.reason, cursor: this.cursor });
      try {
        await this._loadHistory();
        await this.refreshUnread();
      } catch (err) {
        this._call('onError', err);
      } finally {
        const held = this._reloading || [];
        this._reloading = null;
        held.forEach(([n, cursor]) => this._notification(n, cursor));
      }
    }

    // -- helpers ------------------------------------------------------------------------
    _remember(id) {
      if (!id || this._seen.has(id)) return;
      this._seen.add(id);
      if (this._seen.size > this.opts.seenLimit) this._seen.delete(this._seen.values().next().value);
    }

    _setCounts(body) {
      if (!body || typeof body.unread !== 'number' || body.unread < 0) return;
      this.counts = { unseen: body.unseen, unread: body.unread, total: body.total };
      this.unread = body.unread;
      this._call('onCounts', this.counts);
      this._call('onUnread', body.unread);
    }

    _setStatus(status, info) {
      this.status = status;
      this._call('onStatus', status, info || {});
    }

    _call(name, ...args) {
      try {
        this.opts[name](...args);
      } catch (err) {
        if (name !== 'onError') this._call('onError', err);
      }
    }

    async _fetch(path, init) {
      init = Object.assign({}, init || {});
      init.headers = Object.assign({ Authorization: 'Bearer ' + this.token, Accept: 'application/json' },
        init.body ? { 'Content-Type': 'application/json' } : {}, init.headers || {});
      const resp = await fetch(this.base + path, init);
      if (resp.status === 401) throw new AuthError('subscriber token rejected (401)');
      let body = null;
      try { body = await resp.json(); } catch (err) { body = null; }
      if (!resp.ok) {
        const detail = body && body.error ? body.error.code + ': ' + body.error.message : 'HTTP ' + resp.status;
        throw new Error(path.split('?')[0] + ' failed: ' + detail);
      }
      return body;
    }
  }

  root.Notify = {
    connect: (options) => new Client(options),
    Client: Client,
    AuthError: AuthError,
  };
})(typeof window !== 'undefined' ? window : this);
