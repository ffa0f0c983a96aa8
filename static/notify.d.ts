// Type declarations for static/notify.js (a plain script: it defines window.Notify and the
// <notify-inbox> element). Reference it with /// <reference path="notify.d.ts" />.

declare namespace Notify {
  type Transport = 'sse' | 'ws';
  type Status = 'idle' | 'loading' | 'connecting' | 'open' | 'reconnecting' | 'refreshing' | 'unauthorized' | 'closed';
  type Priority = 'low' | 'normal' | 'high';
  type Change = 'read' | 'seen' | 'unread' | 'archive' | 'unarchive';

  interface Action {
    label: string;
    /** http(s) with a host, or a path from the root ("/...") */
    url: string;
  }

  interface Notification {
    id: string;
    /** the user's stream cursor; null while its publish is pending */
    seq: number | null;
    user_id: string;
    title: string;
    message: string;
    category: string;
    data: Record<string, unknown>;
    created_at: string;
    read: boolean;
    seen: boolean;
    archived: boolean;
    priority: Priority;
    actions: Action[];
    /** set when it was scheduled: the time it was sent at (its created_at too) */
    send_at?: string;
    /** it leaves the inbox at this time */
    expires_at?: string;
    /** set once it was changed in place (PATCH /api/notifications/<id>) */
    updated_at?: string;
    /** a newer notification with the same key replaces it */
    collapse_key?: string;
    /** the id of the notification this one replaced (same collapse_key) */
    replaces?: string;
  }

  /** What onUpdate is told: the id changed in place, or (collapse_key) the id replaced. */
  interface UpdateMeta {
    id: string;
    /** null: the notification changed in place; else the id of the one it replaces */
    replaces: string | null;
    cursor: string | null;
  }

  interface Counts {
    unseen: number;
    unread: number;
    total: number;
  }

  /** A change of inbox state made anywhere (any tab, device, or service), with the counts after it. */
  interface StateChange extends Partial<Counts> {
    change: Change | 'delete';
    ids: string[];
    all: boolean;
  }

  interface HistoryPage {
    notifications: Notification[];
    /** pass to history() for the next, older page; null at the end */
    next: string | null;
  }

  interface Options {
    /** the service's origin; '' (default) is this page's */
    url?: string;
    /** a subscriber token from POST /api/tokens */
    token: string;
    transport?: Transport;
    /** resume after this cursor instead of loading the newest history page first */
    cursor?: string | number | null;
    /** called for a fresh token when the current one expired */
    getToken?: (() => Promise<string>) | null;
    historyLimit?: number;
    minDelay?: number;
    maxDelay?: number;
    seenLimit?: number;
    /** acknowledge what arrived (delivery receipts), once per ackInterval ms at most */
    ack?: boolean;
    ackInterval?: number;
    onNotification?(notification: Notification, meta: { cursor: string | null }): void;
    onState?(change: StateChange): void;
    /** a notification changed in place (PATCH), or a new one replaced an older one (collapse_key) */
    onUpdate?(notification: Notification, meta: UpdateMeta): void;
    onReset?(reset: { reason?: string; cursor: string | null }): void;
    onHistory?(list: Notification[], page: HistoryPage): void;
    onStatus?(status: Status, info: Record<string, unknown>): void;
    onUnread?(count: number): void;
    onCounts?(counts: Counts): void;
    onError?(error: Error): void;
  }

  interface ChangeResult {
    updated?: number;
    /** sent as a WebSocket frame: the state event reports the outcome */
    sent?: boolean;
  }

  class Client {
    constructor(options: Options);
    readonly transport: Transport;
    readonly status: Status;
    readonly cursor: string | null;
    readonly unread: number | null;
    readonly counts: Counts | null;
    readonly stats: { received: number; duplicates: number; disconnects: number; reconnects: number; resets: number };
    markRead(ids: Iterable<string>): Promise<ChangeResult>;
    markAllRead(): Promise<ChangeResult>;
    /** the inbox was shown: all (no ids) or the given ones are seen, which clears the badge */
    markSeen(ids?: Iterable<string> | null): Promise<ChangeResult>;
    markUnread(ids: Iterable<string>): Promise<ChangeResult>;
    archive(ids: Iterable<string>): Promise<ChangeResult>;
    unarchive(ids: Iterable<string>): Promise<ChangeResult>;
    remove(id: string): Promise<unknown>;
    change(change: Change, ids: Iterable<string> | null): Promise<ChangeResult>;
    history(before?: string | null): Promise<HistoryPage>;
    refreshCounts(): Promise<void>;
    refreshUnread(): Promise<void>;
    setTransport(transport: Transport): void;
    reconnect(options?: { cursor?: string | number | null }): void;
    close(): void;
    /** registers the service worker, asks for permission, subscribes with the service's VAPID
     *  key and stores the subscription (POST /api/me/push-subscriptions) */
    enablePush(options?: PushOptions): Promise<PushSubscription>;
    /** registers the push service worker (default `<url>/notify-sw.js`, of this page's origin) */
    registerWorker(options?: PushOptions): Promise<ServiceWorkerRegistration>;
    /** removes this browser's subscription here and on the service; false if there was none */
    disablePush(options?: { scope?: string }): Promise<boolean>;
    /** the user's notification preferences (GET /api/me/preferences) */
    getPreferences(): Promise<Preferences>;
    /** replaces them all (PUT /api/me/preferences; left out: the default); what is stored */
    setPreferences(preferences: Partial<Preferences>): Promise<Preferences>;
  }

  /**
   * `inbox`: the inbox, history, counts and replays; `live`: open streams; `push`: Web Push.
   * `live` and `push` imply `inbox` (it may be left out); `["muted"]`: the inbox alone;
   * `[]`: off everywhere (stored, marked `hidden: "preferences"`, but in no inbox).
   */
  type Channels = Array<'inbox' | 'live' | 'push'> | ['muted'] | [];

  interface Preferences {
    /** for uncategorised notifications and unlisted categories */
    default: Channels;
    /** per notification `category`, at most 100 */
    categories: Record<string, Channels>;
    /** Web Push waits until `end` (HH:MM local time in `timezone`, an IANA name) */
    quiet_hours: { start: string; end: string; timezone: string } | null;
  }

  interface PushOptions {
    /** the service worker's URL; default `<url>/notify-sw.js` */
    worker?: string;
    scope?: string;
  }

  class AuthError extends Error {}

  function connect(options: Options): Client;
}

/**
 * <notify-inbox token="..." url="https://notify.example" transport="sse|ws" limit="20">:
 * a bell with the unseen badge and a popover inbox, with a Preferences panel (per category:
 * inbox, in app, push; quiet hours). Themed by CSS variables (--notify-accent,
 * --notify-bg, --notify-fg, --notify-border, --notify-muted, --notify-badge-bg,
 * --notify-badge-fg, --notify-unread-bg, --notify-warn-bg, --notify-font, --notify-width,
 * --notify-height, --notify-z) and ::part(bell), ::part(badge), ::part(panel). Its
 * `status` attribute mirrors the client's status; errors are `notify-error` events.
 */
interface NotifyInboxElement extends HTMLElement {
  readonly client: Notify.Client | null;
  readonly items: Notify.Notification[];
  readonly open: boolean;
  getToken?: () => Promise<string>;
  toggle(force?: boolean): void;
  loadMore(): Promise<void>;
  /** the preferences panel in place of the list (or back to the list with false) */
  showPreferences(show?: boolean): Promise<void>;
  savePreferences(): Promise<void>;
}

interface HTMLElementTagNameMap {
  'notify-inbox': NotifyInboxElement;
}

interface HTMLElementEventMap {
  'notify-error': CustomEvent<Error>;
}

interface Window {
  Notify: typeof Notify;
}
