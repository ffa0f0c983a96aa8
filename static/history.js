/* The user page's history (templates/dashboard/user.html): a live notification that the
 * page's filters select joins the newest page at the top, once; the filter form sends the
 * browser's time zone, so "from" and "to" are the staff member's own days. */
"use strict";

(function () {
  var HIDDEN_STATES = ["read", "archived", "deleted"];  // a new notification is none of these

  function contains(text, needle) { return (text || "").toLowerCase().indexOf(needle) !== -1; }

  /* The same selection as app/dashboard/history.py makes, for a notification just sent. */
  function selects(filter, n) {
    if (HIDDEN_STATES.indexOf(filter.state) !== -1 || n.archived) return false;
    if (filter.state === "unread" && n.read) return false;
    if (filter.category && n.category !== filter.category) return false;
    var at = Date.parse(n.created_at);
    if (filter.since && !(at >= Date.parse(filter.since))) return false;
    if (filter.until && !(at < Date.parse(filter.until))) return false;
    if (filter.q && !contains(n.title, filter.q) && !contains(n.message, filter.q)) return false;
    return true;
  }

  function shown(list, id) {
    return Array.prototype.some.call(list.children, function (li) { return li.dataset.id === id; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var list = document.getElementById("history");
    if (!list) return;
    var zone = document.getElementById("history-tz");
    if (zone && !zone.value) {
      try { zone.value = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (err) { zone.value = ""; }
    }
    var filter = JSON.parse(list.dataset.filter || "{}");
    document.addEventListener("dashboard:notification", function (e) {
      var n = e.detail.notification;
      if (list.dataset.first !== "true" || !selects(filter, n) || shown(list, n.id)) return;
      list.insertBefore(e.detail.build(), list.firstChild);
      var empty = document.getElementById("history-empty");
      if (empty) empty.hidden = true;
    });
  });
})();
