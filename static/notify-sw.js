/*
 * notify-sw.js: the Web Push service worker of notify.js (served by the service at
 * /notify-sw.js; a page on another origin serves a copy from its own origin, since a service
 * worker must come from the page's origin). Client.enablePush() registers it.
 *
 * A push carries one notification as JSON ({id, title, message, category, priority, actions,
 * data, created_at}). It is shown with its actions as buttons; a click on an action opens its
 * URL, a click on the notification opens data.url when it is an http(s) URL, else the page the
 * worker was registered for, focusing a window already showing it.
 */
'use strict';

self.addEventListener('install', () => { self.skipWaiting(); });
self.addEventListener('activate', (event) => { event.waitUntil(self.clients.claim()); });

function webUrl(url) {
  try {
    const parsed = new URL(String(url), self.registration.scope);
    return parsed.protocol === 'https:' || parsed.protocol === 'http:' ? parsed.href : null;
  } catch (err) {
    return null;
  }
}

function shown(note) {
  const max = (self.Notification && self.Notification.maxActions) || 2;
  const actions = (Array.isArray(note.actions) ? note.actions : [])
    .filter((a) => a && a.label && webUrl(a.url)).slice(0, max);
  const data = note.data && typeof note.data === 'object' ? note.data : {};
  return {
    body: String(note.message || ''),
    tag: note.id ? String(note.id) : undefined,
    timestamp: Date.parse(note.created_at) || Date.now(),
    requireInteraction: note.priority === 'high',
    silent: note.priority === 'low',
    actions: actions.map((a, i) => ({ action: String(i), title: String(a.label) })),
    data: {
      id: note.id || null,
      category: note.category || '',
      priority: note.priority || 'normal',
      urls: actions.map((a) => webUrl(a.url)),
      open: webUrl(data.url || '') || self.registration.scope,
    },
  };
}

self.addEventListener('push', (event) => {
  let note;
  try {
    note = event.data ? event.data.json() : {};
  } catch (err) {
    note = { message: event.data ? event.data.text() : '' };
  }
  event.waitUntil(self.registration.showNotification(String(note.title || 'New notification'), shown(note)));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  const chosen = event.action !== '' && Array.isArray(data.urls) ? data.urls[Number(event.action)] : null;
  const url = chosen || data.open || self.registration.scope;
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    const open = windows.find((w) => w.url === url && 'focus' in w);
    return open ? open.focus() : self.clients.openWindow(url);
  })());
});
