/* Times as people read them: every <time datetime="..."> of the dashboard shows how long
 * ago it was ("3 minutes ago"), kept current, with the exact time in the browser's time
 * zone on hover. Without JavaScript the ISO time the server wrote stays. */
"use strict";

(function () {
  var UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400],
               ["hour", 3600], ["minute", 60]];
  var relativeFormat = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
  var exactFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    second: "2-digit", timeZoneName: "short"
  });

  function relative(at, now) {
    var seconds = Math.round((at - now) / 1000);
    if (Math.abs(seconds) < 45) return "just now";
    for (var i = 0; i < UNITS.length; i++) {
      if (Math.abs(seconds) >= UNITS[i][1]) return relativeFormat.format(Math.round(seconds / UNITS[i][1]), UNITS[i][0]);
    }
    return relativeFormat.format(seconds < 0 ? -1 : 1, "minute");
  }

  function render(node, now) {
    var at = Date.parse(node.getAttribute("datetime"));
    if (isNaN(at)) return;
    node.textContent = relative(at, now);
    node.title = exactFormat.format(new Date(at));
  }

  function renderAll(root) {
    var now = Date.now();
    if (root.matches && root.matches("time[datetime]")) render(root, now);
    Array.prototype.forEach.call(root.querySelectorAll("time[datetime]"), function (node) { render(node, now); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    renderAll(document);
    new MutationObserver(function (changes) {  // live notifications, traces
      changes.forEach(function (change) {
        Array.prototype.forEach.call(change.addedNodes, function (node) {
          if (node.nodeType === Node.ELEMENT_NODE) renderAll(node);
        });
      });
    }).observe(document.body, { childList: true, subtree: true });
    window.setInterval(function () { renderAll(document); }, 30000);
  });
})();
