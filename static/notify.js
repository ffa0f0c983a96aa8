/*
 * notify.js: a dependency-free browser client for the notification service (ES2017, no build).
 *
 *   const client = Notify.connect({
 *     url: '',                       // service origin; '' = this page's origin
 *     token: '...',                  // subscriber token from POST /api/tokens
 *     transport: 'sse',              // or 'ws'
 *     getToken: async () => '...',   // optional: a fresh token when the current one expires
 *     onNotification(n, meta) {}, onState(change) {}, onReset(r) {}, onHistory(list) {},
 *     onUpdate(n, meta) {},          // n changed in place (meta.replaces: null), or n replaced
 *                                    // the notification meta.replaces (its collapse_key)
 *     onStatus(status, info) {}, onUnread(count) {}, onCounts(counts) {}, onError(err) {},
 *     ack: true,                     // tell the service what arrived (batched, once a second at most)
 *   });
 *   client.markRead([id]); client.markAllRead(); client.markSeen();  // the badge: all seen
 *   client.markUnread([id]); client.archive([id]); client.unarchive([id]); client.remove(id);
 *   client.setTransport('ws'); client.close();
 *   client.enablePush();  // Web Push while no tab is open (service worker /notify-sw.js)
 *   await client.getPreferences();   // {default, categories: {promo: ['muted'], ads: []}, quiet_hours}
 *   await client.setPreferences({categories: {chat: ['live']}});  // replaces them all
 *
 * Without a cursor it first loads the newest page of history (onHistory) and resumes after its
 * newest cursor, so nothing created meanwhile is lost. It keeps the last cursor, reconnects
 * itself after any drop (capped exponential backoff with jitter, resuming with last_event_id),
 * drops notifications whose id it has already seen, and keeps the inbox counts
 * ({unseen, unread, total}) in step with every state change made anywhere (onState: the
 * change, its ids or all, and the counts after it), in the same cursor order as notifications.
 * A notification the service updated (PATCH) arrives as onUpdate(n, {id, replaces: null});
 * one that replaces an older one (collapse_key) as onNotification(n) then
 * onUpdate(n, {id: n.id, replaces: oldId}).
 * Receipts: the ids of notifications that arrived are acknowledged in one message per
 * second at most (a WebSocket frame, or POST /api/me/ack for SSE).
 * Statuses: loading, connecting, open, reconnecting, refreshing, unauthorized, closed.
 *
 * A drop-in inbox, the same script: <notify-inbox token="..." url="https://notify.example"
 * transport="ws" limit="20"></notify-inbox> renders a bell with the unseen badge and a popover list
 * (mark read / unread, archive, load more, actions as links, empty and offline states; entries
 * updated in place, replaced by their collapse_key's newer one, gone once expired; a
 * Preferences panel: per category inbox / in app / push, and quiet hours),
 * keyboard accessible (Enter/Space opens, Escape closes), themed by CSS variables
 * (--notify-accent, --notify-bg, --notify-fg, --notify-badge-bg, --notify-width, ...) and
 * ::part(bell|badge|panel). Set element.getToken = async () => '...' to refresh tokens.
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
  const CALLBACKS = ['onNotification', 'onState', 'onUpdate', 'onReset', 'onHistory', 'onStatus', 'onUnread', 'onCounts', 'onError'];
  const CHANGES = ['read', 'seen', 'unread', 'archive', 'unarchive'];
  const MAX_ACK_IDS = 1000;
  const WS_TOKEN_EXPIRED = 4401;

  class AuthError extends Error {}

  function b64url(buffer) {
    if (!buffer) return '';
    let text = '';
    new Uint8Array(buffer).forEach((byte) => { text += String.fromCharCode(byte); });
    return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function fromB64url(text) {
    const raw = atob(text.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((text.length + 3) % 4));
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  }

  /** The cursor as the server wrote it: JSON.parse would round integers above 2^53. */
  function wsCursor(text, parsed) {
    const match = /^\{"type":"(?:notification","id|state","seq|update","seq)":(\d+)[,}]/.exec(text);
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

    /** The user's preferences: {default, categories: {name: channels}, quiet_hours}. */
    getPreferences() { return this._fetch('/api/me/preferences'); }

    /** Replace all of them (what is left out takes its default); resolves to what is stored. */
    setPreferences(preferences) {
      return this._fetch('/api/me/preferences', { method: 'PUT', body: JSON.stringify(preferences) });
    }

    /**
     * Web Push for this user while no tab is open: registers the service worker (default
     * <url>/notify-sw.js; it must be of this page's origin), asks for notification permission,
     * subscribes with the service's public VAPID key and stores the subscription. Resolves to
     * the PushSubscription.
     */
    async enablePush(options) {
      const opts = Object.assign({ worker: this.base + '/notify-sw.js', scope: undefined }, options || {});
      const registration = await this.registerWorker(opts);
      if (typeof Notification !== 'undefined' && Notification.permission !== 'granted') {
        if (await Notification.requestPermission() !== 'granted') throw new Error('notifications are not allowed');
      }
      const { public_key: key } = await this._fetch('/api/me/push-key');
      let subscription = await registration.pushManager.getSubscription();
      if (subscription && b64url(subscription.options.applicationServerKey) !== key) {
        await subscription.unsubscribe(); // made with another key: push services would refuse it
        subscription = null;
      }
      if (!subscription) {
        subscription = await registration.pushManager.subscribe({
          userVisibleOnly: true, applicationServerKey: fromB64url(key),
        });
      }
      await this._fetch('/api/me/push-subscriptions', { method: 'POST', body: JSON.stringify(subscription) });
      return subscription;
    }

    /** Registers the push service worker and resolves once it is active. */
    async registerWorker(options) {
      const opts = Object.assign({ worker: this.base + '/notify-sw.js', scope: undefined }, options || {});
      const nav = root.navigator;
      if (!nav || !nav.serviceWorker || typeof root.PushManager === 'undefined') {
        throw new Error('Web Push is not supported here (it needs a secure context and a service worker)');
      }
      const registration = await nav.serviceWorker.register(opts.worker, opts.scope ? { scope: opts.scope } : {});
      const worker = registration.installing || registration.waiting;
      if (!registration.active && worker) {
        await new Promise((resolve) => {
          worker.addEventListener('statechange', () => { if (worker.state === 'activated') resolve(); });
        });
      }
      return registration;
    }

    /** Stops Web Push for this browser: the subscription is removed here and on the service. */
    async disablePush(options) {
      const opts = Object.assign({ scope: undefined }, options || {});
      const nav = root.navigator;
      const registration = nav && nav.serviceWorker ? await nav.serviceWorker.getRegistration(opts.scope) : null;
      const subscription = registration ? await registration.pushManager.getSubscription() : null;
      if (!subscription) return false;
      await this._fetch('/api/me/push-subscriptions', {
        method: 'DELETE', body: JSON.stringify({ endpoint: subscription.endpoint }),
      });
      await subscription.unsubscribe();
      return true;
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
      es.addEventListener('update', mine((e) => this._update(JSON.parse(e.data), e.lastEventId)));
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
        else if (frame.type === 'update') this._update(frame, wsCursor(event.data, frame.seq));
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
      if (n.replaces) this._call('onUpdate', n, { id: n.id, replaces: n.replaces, cursor: cursor || null });
    }

    /** A notification changed in place: the same id, its new content and state. */
    _update(body, cursor) {
      if (cursor) this.cursor = cursor;
      if (this._reloading || !body || !body.notification) return; // the history being reloaded has it as it is now
      this._call('onUpdate', body.notification, { id: body.id, replaces: null, cursor: cursor || null });
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


  // -- <notify-inbox>: a drop-in inbox (bell, unseen badge, popover list) --------------------
  const INBOX_CSS = `
    :host { position: relative; display: inline-block; font: var(--notify-font, 14px/1.4 system-ui, sans-serif);
      color: var(--notify-fg, #1f2328); }
    button { font: inherit; cursor: pointer; }
    .bell { position: relative; border: 0; background: transparent; padding: 6px; border-radius: 6px;
      color: var(--notify-bell, currentColor); }
    .bell:focus-visible, .panel button:focus-visible, .panel a:focus-visible {
      outline: 2px solid var(--notify-accent, #0969da); outline-offset: 2px; }
    .badge { position: absolute; top: 0; right: 0; min-width: 16px; padding: 0 4px; border-radius: 8px;
      background: var(--notify-badge-bg, #cf222e); color: var(--notify-badge-fg, #fff); font-size: 11px;
      line-height: 16px; text-align: center; }
    .badge[hidden] { display: none; }
    .panel { position: absolute; right: 0; z-index: var(--notify-z, 1000); width: var(--notify-width, 340px);
      max-height: var(--notify-height, 420px); overflow: auto; margin-top: 4px; border-radius: 8px;
      background: var(--notify-bg, #fff); border: 1px solid var(--notify-border, #d0d7de);
      box-shadow: 0 8px 24px rgba(0, 0, 0, .15); }
    .panel[hidden] { display: none; }
    header { display: flex; justify-content: space-between; align-items: center; padding: 8px 12px;
      border-bottom: 1px solid var(--notify-border, #d0d7de); font-weight: 600; }
    .status { padding: 6px 12px; background: var(--notify-warn-bg, #fff8c5); font-size: 12px; }
    .status[hidden] { display: none; }
    ul { list-style: none; margin: 0; padding: 0; }
    li { padding: 8px 12px; border-bottom: 1px solid var(--notify-border, #d0d7de); }
    li.unread { background: var(--notify-unread-bg, #f6f8fa); }
    li.high .title::before { content: "! "; color: var(--notify-badge-bg, #cf222e); }
    .title { font-weight: 600; }
    .meta { color: var(--notify-muted, #656d76); font-size: 12px; }
    .actions, .tools { display: flex; gap: 8px; flex-wrap: wrap; margin-top: 4px; }
    .actions a { color: var(--notify-accent, #0969da); }
    .tools button, header button, .more { border: 0; background: transparent; padding: 0;
      color: var(--notify-accent, #0969da); font-size: 12px; }
    .empty { padding: 24px 12px; text-align: center; color: var(--notify-muted, #656d76); }
    .more { display: block; width: 100%; padding: 8px; }
    .more[hidden], .empty[hidden], .all-read[hidden], ul[hidden] { display: none; }
    .head-tools { display: flex; gap: 12px; }
    form.prefs { padding: 8px 12px; }
    form.prefs[hidden] { display: none; }
    form.prefs fieldset { border: 0; border-bottom: 1px solid var(--notify-border, #d0d7de); margin: 0;
      padding: 6px 0; display: flex; flex-wrap: wrap; gap: 4px 12px; }
    form.prefs legend { font-weight: 600; padding: 0; float: left; width: 100%; overflow-wrap: anywhere; }
    form.prefs input:focus-visible { outline: 2px solid var(--notify-accent, #0969da); outline-offset: 2px; }
    form.prefs .buttons { display: flex; gap: 8px; margin-top: 8px; }
    form.prefs .buttons button { padding: 2px 10px; }
    .prefs-result { font-size: 12px; margin: 6px 0 0; }
  `;
  const BELL_SVG = '<svg width="20" height="20" viewBox="0 0 24 24" aria-hidden="true" fill="currentColor">' +
    '<path d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 0-5.5-6.84V3a1.5 1.5 0 0 0-3 0' +
    'v1.16A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2Z"/></svg>';

  function relativeTime(iso) {
    const seconds = Math.round((Date.parse(iso) - Date.now()) / 1000);
    const units = [['year', 31536000], ['month', 2592000], ['day', 86400], ['hour', 3600], ['minute', 60]];
    const format = typeof Intl !== 'undefined' && Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' }) : null;
    for (const [unit, size] of units) {
      if (Math.abs(seconds) >= size) return format ? format.format(Math.round(seconds / size), unit) : iso;
    }
    return format ? format.format(seconds, 'second') : iso;
  }

  /** A link target the service validated (http(s) or a root-relative path); anything else is dropped. */
  function safeHref(url) {
    return /^(https?:\/\/|\/(?!\/))/i.test(String(url || '')) ? String(url) : null;
  }

  function defineInbox(HTMLElement, customElements) {
    class NotifyInbox extends HTMLElement {
      static get observedAttributes() { return ['token', 'url', 'transport', 'limit']; }

      constructor() {
        super();
        this.items = [];
        this.client = null;
        this._next = null;
        const shadow = this.attachShadow({ mode: 'open' });
        shadow.innerHTML = `<style>${INBOX_CSS}</style>
          <button class="bell" part="bell" aria-haspopup="true" aria-expanded="false" aria-label="Notifications">
            ${BELL_SVG}<span class="badge" part="badge" hidden></span></button>
          <div class="panel" part="panel" role="region" aria-label="Notifications" hidden>
            <header><span>Notifications</span><span class="head-tools">
              <button class="prefs-open" type="button" aria-expanded="false" aria-controls="prefs">Preferences</button>
              <button class="all-read" type="button">Mark all read</button></span></header>
            <div class="status" role="status" hidden></div>
            <ul role="list"></ul>
            <div class="empty">No notifications</div>
            <button class="more" type="button" hidden>Load more</button>
            <form class="prefs" id="prefs" aria-label="Notification preferences" hidden></form>
          </div>`;
        this.$ = (selector) => shadow.querySelector(selector);
        this.$('.bell').addEventListener('click', () => this.toggle());
        this.$('.all-read').addEventListener('click', () => this.client && this.client.markAllRead());
        this.$('.more').addEventListener('click', () => this.loadMore());
        this.$('ul').addEventListener('click', (event) => this._tool(event));
        this.$('.prefs-open').addEventListener('click', () => this.showPreferences(!this._prefsShown));
        this.$('form.prefs').addEventListener('submit', (event) => { event.preventDefault(); this.savePreferences(); });
        this.$('form.prefs').addEventListener('change', (event) => this._prefsToggle(event.target));
        // Escape and a click elsewhere close it, wherever the focus went meanwhile
        this._onKey = (event) => {
          if (event.key === 'Escape' && this.open) { this.toggle(false); this.$('.bell').focus(); }
        };
        this._onClick = (event) => { if (this.open && !event.composedPath().includes(this)) this.toggle(false); };
      }

      get open() { return !this.$('.panel').hidden; }

      connectedCallback() {
        document.addEventListener('keydown', this._onKey);
        document.addEventListener('click', this._onClick);
        this._connect();
      }

      disconnectedCallback() {
        clearTimeout(this._expiry);
        document.removeEventListener('keydown', this._onKey);
        document.removeEventListener('click', this._onClick);
        if (this.client) this.client.close();
        this.client = null;
      }

      attributeChangedCallback() { if (this.isConnected) this._connect(); }

      toggle(force) {
        const open = force === undefined ? !this.open : !!force;
        this.$('.panel').hidden = !open;
        this.$('.bell').setAttribute('aria-expanded', String(open));
        if (open) this._place();
        if (open && this.client && this.client.counts && this.client.counts.unseen) this.client.markSeen();
        if (open) { const first = this.$('.panel button, .panel a'); if (first) first.focus(); }
      }

      /** Under the bell, ending at its right edge, unless that would leave the viewport. */
      _place() {
        const panel = this.$('.panel');
        const bell = this.getBoundingClientRect();
        const fitsLeftward = bell.right - panel.offsetWidth >= 0;
        panel.style.right = fitsLeftward ? '0' : 'auto';
        panel.style.left = fitsLeftward ? 'auto' : '0';
      }

      async loadMore() {
        if (!this.client || !this._next) return;
        const page = await this.client.history(this._next);
        this._next = page.next || null;
        this._add(page.notifications || [], false);
      }

      /** The preferences panel in place of the list (per category: inbox, in app, push; quiet hours). */
      async showPreferences(show) {
        show = show === undefined ? true : !!show;
        this._prefsShown = show;
        this.$('.prefs-open').setAttribute('aria-expanded', String(show));
        this.$('.prefs-open').textContent = show ? 'Back' : 'Preferences';
        ['ul', '.all-read'].forEach((sel) => { this.$(sel).hidden = show; });
        this.$('.empty').hidden = show || this.items.length > 0;
        this.$('.more').hidden = show || !this._next;
        const form = this.$('form.prefs');
        form.hidden = !show;
        if (!show || !this.client) return;
        form.textContent = 'Loading…';
        try {
          this._renderPrefs(await this.client.getPreferences());
          const first = form.querySelector('input');
          if (first) first.focus();
        } catch (err) {
          form.textContent = 'Preferences could not be loaded';
          this.dispatchEvent(new CustomEvent('notify-error', { detail: err }));
        }
      }

      _renderPrefs(prefs) {
        const form = this.$('form.prefs');
        form.textContent = '';
        const el = (tag, props) => Object.assign(document.createElement(tag), props || {});
        const seen = this.items.map((n) => n.category).filter(Boolean);
        const names = Array.from(new Set(Object.keys(prefs.categories || {}).concat(seen))).sort().slice(0, 100);
        const rows = [['', 'Any category', prefs.default]].concat(
          names.map((name) => [name, name, (prefs.categories || {})[name] || prefs.default]));
        rows.forEach(([key, label, channels]) => {
          const set = el('fieldset');
          set.dataset.category = key;
          set.appendChild(el('legend', { textContent: label }));
          // ['muted'] is the inbox alone, [] off everywhere; live and push come with the inbox
          [['inbox', 'Inbox'], ['live', 'In app'], ['push', 'Push']].forEach(([channel, text]) => {
            const on = channel === 'inbox' ? channels.length > 0 : channels.indexOf(channel) >= 0;
            const box = el('input', { type: 'checkbox', name: channel, checked: on });
            const tag = el('label');
            tag.append(box, ' ' + text);
            set.appendChild(tag);
          });
          form.appendChild(set);
        });
        const quiet = prefs.quiet_hours;
        const zone = (typeof Intl !== 'undefined' && Intl.DateTimeFormat().resolvedOptions().timeZone) || 'UTC';
        const set = el('fieldset', { className: 'quiet' });
        set.appendChild(el('legend', { textContent: 'Quiet hours (push waits until they end)' }));
        const field = (text, input) => { const tag = el('label'); tag.append(text + ' ', input); set.appendChild(tag); return input; };
        field('On', el('input', { type: 'checkbox', name: 'quiet', checked: !!quiet }));
        field('From', el('input', { type: 'time', name: 'start', value: quiet ? quiet.start : '22:00' }));
        field('to', el('input', { type: 'time', name: 'end', value: quiet ? quiet.end : '07:00' }));
        field('Time zone', el('input', { type: 'text', name: 'timezone', value: quiet ? quiet.timezone : zone, size: 16 }));
        form.appendChild(set);
        const buttons = el('div', { className: 'buttons' });
        buttons.appendChild(el('button', { type: 'submit', textContent: 'Save' }));
        form.appendChild(buttons);
        form.appendChild(el('p', { className: 'prefs-result', hidden: true }));
        form.lastChild.setAttribute('role', 'status');
      }

      /** In app and Push show it in the inbox too: turning one on turns the inbox on, turning
       * the inbox off turns them off. */
      _prefsToggle(box) {
        const set = box.closest('fieldset');
        if (!set || set.classList.contains('quiet')) return;
        const input = (name) => set.querySelector(`input[name="${name}"]`);
        if (box.name === 'inbox' && !box.checked) ['live', 'push'].forEach((name) => { input(name).checked = false; });
        if (box.name !== 'inbox' && box.checked) input('inbox').checked = true;
      }

      /** What the panel shows, as preferences: categories only where they differ from the default. */
      _prefsFromForm() {
        const form = this.$('form.prefs');
        const channels = (set) => {
          const on = ['inbox', 'live', 'push'].filter((name) => set.querySelector(`input[name="${name}"]`).checked);
          return on.join() === 'inbox' ? ['muted'] : on;  // the inbox alone is muted; none: not even the inbox
        };
        const sets = Array.from(form.querySelectorAll('fieldset[data-category]'));
        const fallback = channels(sets[0]);
        const categories = {};
        sets.slice(1).forEach((set) => {
          const own = channels(set);
          if (own.join() !== fallback.join()) categories[set.dataset.category] = own;
        });
        const value = (name) => form.querySelector(`input[name="${name}"]`).value;
        const quiet = form.querySelector('input[name="quiet"]').checked
          ? { start: value('start'), end: value('end'), timezone: value('timezone') } : null;
        return { default: fallback, categories: categories, quiet_hours: quiet };
      }

      async savePreferences() {
        const result = this.$('.prefs-result');
        if (!this.client || !result) return;
        try {
          await this.client.setPreferences(this._prefsFromForm());
          result.textContent = 'Saved';
        } catch (err) {
          result.textContent = String(err.message || err).replace(/^\/api\/me\/preferences failed: \w+: /, '');
          this.dispatchEvent(new CustomEvent('notify-error', { detail: err }));
        }
        result.hidden = false;
      }

      _connect() {
        const token = this.getAttribute('token');
        if (!token) return;
        if (this.client) this.client.close();
        this.items = [];
        this.client = root.Notify.connect({
          url: this.getAttribute('url') || '',
          token: token,
          transport: this.getAttribute('transport') || 'sse',
          historyLimit: Number(this.getAttribute('limit')) || DEFAULTS.historyLimit,
          getToken: typeof this.getToken === 'function' ? this.getToken : null,
          onHistory: (list, page) => { this.items = []; this._next = (page && page.next) || null; this._add(list, false); },
          onNotification: (n) => this._add([n], true),
          onState: (change) => this._apply(change),
          onUpdate: (n, meta) => this._update(n, meta),
          onCounts: (counts) => this._badge(counts.unseen),
          onStatus: (status) => this._status(status),
          onError: (err) => this.dispatchEvent(new CustomEvent('notify-error', { detail: err })),
        });
        this.client.refreshCounts().catch(() => {});
      }

      _add(list, newest) {
        const known = new Set(this.items.map((n) => n.id));
        const fresh = list.filter((n) => n && !known.has(n.id) && !n.archived);
        this.items = newest ? fresh.concat(this.items) : this.items.concat(fresh);
        this._render();
      }

      _apply(change) {
        const ids = new Set(change.ids);
        const hit = (n) => change.all || ids.has(n.id);
        if (change.change === 'archive' || change.change === 'delete') this.items = this.items.filter((n) => !hit(n));
        this.items.forEach((n) => {
          if (!hit(n)) return;
          if (change.change === 'read') { n.read = true; n.seen = true; }
          if (change.change === 'unread') n.read = false;
          if (change.change === 'seen') n.seen = true;
        });
        if (change.change === 'unarchive' && this.client) this.client.history().then((page) => this._add(page.notifications || [], true));
        this._render();
      }

      /** An entry changed in place keeps its place; one replaced (collapse_key) leaves. */
      _update(n, meta) {
        if (meta.replaces) this.items = this.items.filter((item) => item.id !== meta.replaces);
        else this.items = this.items.map((item) => (item.id === n.id ? n : item));
        this._render();
      }

      _badge(unseen) {
        const badge = this.$('.badge');
        badge.hidden = !unseen;
        badge.textContent = unseen > 99 ? '99+' : String(unseen || '');
        this.$('.bell').setAttribute('aria-label', unseen ? `Notifications, ${unseen} new` : 'Notifications');
      }

      _status(status) {
        const box = this.$('.status');
        const text = { reconnecting: 'Offline: reconnecting…', unauthorized: 'Signed out of notifications',
          closed: 'Disconnected' }[status];
        box.hidden = !text;
        box.textContent = text || '';
        this.setAttribute('status', status);
      }

      _render() {
        const list = this.$('ul');
        const focused = this.shadowRoot.activeElement;
        const at = focused && list.contains(focused) ? Array.from(list.children).indexOf(focused.closest('li')) : -1;
        list.textContent = '';
        const now = Date.now();
        this.items = this.items.filter((n) => !n.expires_at || Date.parse(n.expires_at) > now);
        const expiries = this.items.filter((n) => n.expires_at).map((n) => Date.parse(n.expires_at));
        clearTimeout(this._expiry);
        if (expiries.length) this._expiry = setTimeout(() => this._render(), Math.min(...expiries) - now + 50);
        this.items.forEach((n) => list.appendChild(this._item(n)));
        this.$('.empty').hidden = this._prefsShown || this.items.length > 0;
        this.$('.more').hidden = this._prefsShown || !this._next;
        if (at >= 0) { // the keyboard stays in the list: the same row's (or the next) first button
          const row = list.children[Math.min(at, list.children.length - 1)];
          (row ? row.querySelector('button') : this.$('.all-read')).focus();
        }
      }

      _item(n) {
        const li = document.createElement('li');
        li.dataset.id = n.id;
        li.className = (n.read ? 'read' : 'unread') + (n.priority === 'high' ? ' high' : '');
        const line = (cls, text) => { const el = document.createElement('div'); el.className = cls; el.textContent = text; return el; };
        if (n.title) li.appendChild(line('title', n.title));
        li.appendChild(line('message', n.message));
        const when = line('meta', relativeTime(n.created_at));
        when.title = new Date(n.created_at).toLocaleString();
        li.appendChild(when);
        const actions = document.createElement('div');
        actions.className = 'actions';
        (n.actions || []).forEach((a) => {
          const href = safeHref(a.url);
          if (!href) return;
          const link = document.createElement('a');
          link.href = href; link.textContent = a.label; link.target = '_blank'; link.rel = 'noopener noreferrer';
          actions.appendChild(link);
        });
        if (actions.childNodes.length) li.appendChild(actions);
        const tools = document.createElement('div');
        tools.className = 'tools';
        [[n.read ? 'unread' : 'read', n.read ? 'Mark unread' : 'Mark read'], ['archive', 'Archive']].forEach(([change, label]) => {
          const button = document.createElement('button');
          button.type = 'button'; button.dataset.change = change; button.textContent = label;
          button.setAttribute('aria-label', `${label}: ${n.title || n.message}`);
          tools.appendChild(button);
        });
        li.appendChild(tools);
        return li;
      }

      _tool(event) {
        const button = event.target.closest('button[data-change]');
        if (!button || !this.client) return;
        const id = button.closest('li').dataset.id;
        this.client.change(button.dataset.change, [id]).catch((err) => this.dispatchEvent(new CustomEvent('notify-error', { detail: err })));
      }
    }
    if (!customElements.get('notify-inbox')) customElements.define('notify-inbox', NotifyInbox);
  }

  if (root.customElements && root.HTMLElement) defineInbox(root.HTMLElement, root.customElements);

  root.Notify = {
    connect: (options) => new Client(options),
    Client: Client,
    AuthError: AuthError,
  };
})(typeof window !== 'undefined' ? window : this);
