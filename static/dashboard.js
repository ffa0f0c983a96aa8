/* Support dashboard: live updates over SSE, actions over fetch with the CSRF token.
 * User data is only ever written with textContent (never innerHTML), so a message like
 * <script>alert(1)</script> shows as text. No build step, no dependencies. */
"use strict";

(function () {
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var CSRF = csrfMeta ? csrfMeta.getAttribute("content") : "";

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function byId(id) { return document.getElementById(id); }

  function show(node, visible) { if (node) node.hidden = !visible; }

  function setLive(state, label) {
    var node = byId("live-state");
    if (!node) return;
    node.dataset.state = state;
    node.textContent = label;
  }

  /* Same markup as templates/dashboard/_macros.html */
  function notificationItem(n, opts) {
    opts = opts || {};
    var known = n.read !== undefined;
    var li = el("li", "notif" + (known ? (n.read ? " is-read" : " is-unread") : ""));
    li.dataset.id = n.id;
    var head = el("div", "notif-head");
    if (opts.userUrl) {
      var a = el("a", "notif-user", n.user_id);
      a.href = opts.userUrl.replace("__USER__", encodeURIComponent(n.user_id));
      head.appendChild(a);
    }
    head.appendChild(el("strong", "notif-title", n.title || "(no title)"));
    if (n.category) head.appendChild(el("span", "tag", n.category));
    if (n.priority && n.priority !== "normal") head.appendChild(el("span", "tag priority-" + n.priority, n.priority));
    li.appendChild(head);
    li.appendChild(el("p", "notif-message", n.message));
    if (n.data && Object.keys(n.data).length) {
      var data = el("details", "notif-data");
      data.appendChild(el("summary", null, "data"));
      data.appendChild(el("code", null, JSON.stringify(n.data)));
      li.appendChild(data);
    }
    if (n.actions && n.actions.length) {
      var links = el("div", "notif-actions");
      n.actions.forEach(function (action) {
        var url;
        try { url = new URL(action.url, window.location.href); } catch (err) { return; }
        if (url.protocol !== "http:" && url.protocol !== "https:") return; // the service refuses others too
        var link = el("a", null, action.label);
        link.href = url.href;
        link.rel = "noopener noreferrer";
        links.appendChild(link);
      });
      li.appendChild(links);
    }
    var meta = el("div", "notif-meta");
    var time = el("time", null, n.created_at);
    time.setAttribute("datetime", n.created_at || "");
    time.title = n.created_at || "";
    meta.appendChild(time);
    if (known) meta.appendChild(el("span", "notif-state", n.read ? "read" : "unread"));
    if (n.archived) meta.appendChild(el("span", "notif-state", "archived"));
    if (n.deleted) meta.appendChild(el("span", "notif-state deleted", "deleted by the user"));
    if (opts.actions && !n.read) {
      var button = el("button", "mark-read link", "Mark read");
      button.type = "button";
      meta.appendChild(button);
    }
    if (opts.actions) {
      var trace = el("button", "show-trace link", "Delivery");
      trace.type = "button";
      meta.appendChild(trace);
    }
    li.appendChild(meta);
    return li;
  }

  /* The delivery record as a timeline, with the verdict first (text nodes only). */
  function renderTrace(li, data) {
    var old = li.querySelector(".trace");
    if (old) old.parentNode.removeChild(old);
    var box = el("div", "trace");
    box.appendChild(el("p", "trace-verdict", data.verdict));
    if (data.sent_by) box.appendChild(el("p", "trace-by", "sent from the console by " + data.sent_by));
    var steps = el("ol", "timeline");
    var d = data.delivery;
    function step(label, at) {
      var item = el("li", at ? "done" : "pending");
      item.appendChild(el("span", "step", label));
      item.appendChild(el("time", null, at || "—"));
      steps.appendChild(item);
    }
    step("stored", d.stored_at);
    step("published", d.published_at);
    d.sent.forEach(function (s) {
      step("written to " + s.transport + " on " + s.instance + " (worker " + s.worker + ")", s.at);
      step("received on that " + s.transport + " connection", s.received_at);
    });
    step("received", d.received_at);
    step("seen", d.seen_at);
    step("read", d.read_at);
    step("archived", d.archived_at);
    box.appendChild(steps);
    li.appendChild(box);
  }

  function prepend(list, item, max) {
    list.insertBefore(item, list.firstChild);
    while (max && list.children.length > max) list.removeChild(list.lastChild);
  }

  function postJSON(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF, "Accept": "application/json" },
      body: JSON.stringify(body)
    }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (data) {
        if (resp.status === 401) { window.location.reload(); }
        if (!resp.ok) {
          var message = (data.error && data.error.message) || ("request failed (" + resp.status + ")");
          throw new Error(message);
        }
        return data;
      });
    });
  }

  /* An EventSource that reports its state and survives refusals: when the browser gives up
   * (a non-200 answer), check the session; signed out -> reload (to the login page),
   * otherwise open a new stream after a pause. */
  function openStream(url, handlers) {
    var source = null;
    var stopped = false;

    function connect() {
      source = new EventSource(url);
      source.onopen = function () { setLive("connected", "live"); };
      source.onerror = function () {
        setLive("reconnecting", "reconnecting…");
        if (source.readyState !== EventSource.CLOSED || stopped) return;
        fetch(window.location.href, { credentials: "same-origin", redirect: "manual" }).then(function (resp) {
          if (resp.type === "opaqueredirect" || resp.status === 401) window.location.reload();
          else window.setTimeout(connect, 3000);
        }, function () { window.setTimeout(connect, 3000); });
      };
      Object.keys(handlers).forEach(function (name) {
        source.addEventListener(name, function (e) {
          var data;
          try { data = JSON.parse(e.data); } catch (err) { return; }
          handlers[name](data, e);
        });
      });
      source.addEventListener("signed_out", function () { stop(); window.location.reload(); });
    }

    function stop() {
      stopped = true;
      if (source) source.close();
    }

    window.addEventListener("pagehide", stop);
    connect();
  }

  /* ---------------- overview ---------------- */
  function drawChart(canvas, series) {
    var ratio = window.devicePixelRatio || 1;
    var width = canvas.clientWidth || 300;
    var height = canvas.clientHeight || 160;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    var ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    var peak = Math.max.apply(null, [1].concat(series));
    var pad = 18;
    ctx.strokeStyle = "#d8dde6";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(0, height - pad + 0.5);
    ctx.lineTo(width, height - pad + 0.5);
    ctx.stroke();
    ctx.fillStyle = "#6b7385";
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText(peak + "/s", 4, 12);
    ctx.fillText("-" + series.length + " s", 4, height - 4);
    ctx.fillText("now", width - 26, height - 4);
    if (!series.length) return;
    var slot = width / series.length;
    var bar = Math.max(slot - 1, 1);
    ctx.fillStyle = "#2f6fde";
    series.forEach(function (v, i) {
      if (!v) return;
      var h = Math.max((v / peak) * (height - pad - 16), 1);
      ctx.fillRect(i * slot, height - pad - h, bar, h);
    });
  }

  function initOverview() {
    var stats = byId("stats");
    var list = byId("recent-list");
    var canvas = byId("rate-chart");
    var series = [];
    var fields = { connections: "stat-connections", online_users: "stat-users", last_minute: "stat-minute",
                   last_hour: "stat-hour", workers: "stat-workers" };
    window.addEventListener("resize", function () { drawChart(canvas, series); });
    drawChart(canvas, series);
    openStream(stats.dataset.stream, {
      stats: function (data) {
        Object.keys(fields).forEach(function (key) {
          byId(fields[key]).textContent = data[key] === null || data[key] === undefined ? "–" : data[key];
        });
        var error = byId("stats-error");
        error.textContent = data.error || "";
        show(error, !!data.error);
        series = data.series || [];
        byId("chart-peak").textContent = "peak " + Math.max.apply(null, [0].concat(series)) + "/s";
        drawChart(canvas, series);
      },
      notification: function (n) {
        prepend(list, notificationItem(n, { userUrl: list.dataset.userUrl }), 50);
        show(byId("recent-empty"), false);
      },
      closed: function () { setLive("reconnecting", "reconnecting…"); }
    });
  }

  /* ---------------- user page ---------------- */
  function initUser() {
    var page = byId("user-page");
    var feed = byId("live-feed");
    var history = byId("history");
    var cache = byId("cache-status");
    var ttlLeft = cache.dataset.ttl === "" ? null : Number(cache.dataset.ttl);

    function renderCache(cached, ttl) {
      ttlLeft = cached && ttl !== null && ttl !== undefined ? ttl : null;
      cache.dataset.state = cached ? "cached" : "fresh";
      cache.dataset.ttl = ttlLeft === null ? "" : String(ttlLeft);
      cache.textContent = cached ? "cached · " + (ttlLeft === null ? "?" : ttlLeft) + " s left" : "fresh";
      byId("cache-explain").textContent = cached ? "history is served from the Redis cache"
        : "not cached: the next read comes fresh from MongoDB";
    }

    function renderUnread(unread) {
      byId("unread-count").textContent = unread === null || unread === undefined ? "–" : unread;
      byId("mark-all-read").disabled = !unread;
    }

    function renderPresence(connections) {
      var badge = byId("presence");
      if (connections === null || connections === undefined) {
        badge.className = "badge offline";
        badge.textContent = "online status unknown";
        return;
      }
      badge.dataset.connections = String(connections);
      badge.className = "badge " + (connections ? "online" : "offline");
      badge.textContent = connections ? "online · " + connections + " connection" + (connections === 1 ? "" : "s")
        : "offline";
    }

    /* The connections card, rendered by the server again when the count changed. */
    function refreshConnections(count) {
      var card = byId("connections");
      if (!card || count === null || count === undefined || String(count) === card.dataset.count) return;
      card.dataset.count = String(count);
      fetch(card.dataset.refresh, { credentials: "same-origin" }).then(function (resp) {
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        return resp.text();
      }).then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("connections");
        if (fresh && byId("connections")) byId("connections").replaceWith(fresh);
      }).catch(function () { card.dataset.count = ""; });
    }

    function markItemsRead(ids) {
      var all = ids === null;
      [feed, history].forEach(function (list) {
        Array.prototype.forEach.call(list.children, function (li) {
          if (all || ids.indexOf(li.dataset.id) !== -1) {
            li.classList.remove("is-unread");
            li.classList.add("is-read");
            var state = li.querySelector(".notif-state");
            if (state) state.textContent = "read";
            var button = li.querySelector(".mark-read");
            if (button) button.remove();
          }
        });
      });
    }

    window.setInterval(function () {
      if (ttlLeft !== null && cache.dataset.state === "cached") {
        ttlLeft = Math.max(ttlLeft - 1, 0);
        if (ttlLeft === 0) renderCache(false, null); else renderCache(true, ttlLeft);
      }
    }, 1000);

    openStream(page.dataset.stream, {
      notification: function (n) {
        prepend(feed, notificationItem(n, { actions: true }), 100);
        show(byId("live-empty"), false);
        /* static/history.js merges it into the history when it belongs there */
        document.dispatchEvent(new CustomEvent("dashboard:notification", {
          detail: { notification: n, build: function () { return notificationItem(n, { actions: true }); } }
        }));
      },
      state: function (data) {
        if (data.change === "read") markItemsRead(data.all ? null : data.ids || []);
        renderUnread(data.unread);
      },
      reset: function () { feed.insertBefore(el("li", "notice", "Some events were missed: reload the history."), feed.firstChild); },
      status: function (data) {
        var error = byId("status-error");
        error.textContent = data.error || "";
        show(error, !!data.error);
        if (data.cache) renderCache(data.cache.cached, data.cache.ttl);
        if ("unread" in data) renderUnread(data.unread);
        if ("connections" in data) {
          renderPresence(data.connections);
          refreshConnections(data.connections);
        }
      },
      closed: function () { setLive("reconnecting", "reconnecting…"); }
    });

    document.addEventListener("click", function (e) {
      var target = e.target;
      if (!(target instanceof HTMLElement)) return;
      if (target.classList.contains("show-trace")) {
        var item = target.closest("li");
        fetch(page.dataset.trace.replace("__ID__", encodeURIComponent(item.dataset.id)), {
          credentials: "same-origin", headers: { "Accept": "application/json" }
        }).then(function (resp) {
          if (resp.status === 401) { window.location.reload(); }
          return resp.json();
        }).then(function (data) {
          if (!data.delivery) throw new Error((data.error && data.error.message) || "trace unavailable");
          renderTrace(item, data);
        }).catch(function (err) { window.alert(err.message); });
      }
      if (target.classList.contains("mark-read")) {
        var li = target.closest("li");
        target.disabled = true;
        postJSON(page.dataset.read, { ids: [li.dataset.id] }).then(function (data) {
          markItemsRead([li.dataset.id]);
          renderUnread(data.unread);
        }).catch(function (err) { target.disabled = false; window.alert(err.message); });
      }
    });

    byId("mark-all-read").addEventListener("click", function () {
      postJSON(page.dataset.read, { all: true }).then(function (data) {
        markItemsRead(null);
        renderUnread(data.unread);
      }).catch(function (err) { window.alert(err.message); });
    });

    /* A test send asks first (the form alone, without this script, gets a confirm page). */
    var form = byId("test-form");
    var confirmBox = byId("test-confirm");
    var submit = form.querySelector("button[type=submit]");
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      show(byId("test-result"), false);
      show(confirmBox, true);
      submit.disabled = true;
      byId("test-confirm-send").focus();
    });
    function closeConfirm() { show(confirmBox, false); submit.disabled = false; }
    byId("test-confirm-cancel").addEventListener("click", function () { closeConfirm(); submit.focus(); });
    byId("test-confirm-send").addEventListener("click", function () {
      var result = byId("test-result");
      var button = byId("test-confirm-send");
      button.disabled = true;
      postJSON(page.dataset.send, { title: form.elements.title.value, message: form.elements.message.value })
        .then(function (data) {
          result.className = "form-result ok";
          result.textContent = data.published ? "Sent." : "Stored; it will be delivered once Redis is back.";
          form.elements.message.value = "";
        })
        .catch(function (err) {
          result.className = "form-result error";
          result.textContent = err.message;
        })
        .then(function () { show(result, true); button.disabled = false; closeConfirm(); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var page = document.body.dataset.page;
    if (page === "overview") initOverview();
    if (page === "user") initUser();
  });
})();
