// Live refresh for the relay dashboard: re-fetch this same URL every few seconds with
// `X-Partial: 1` and swap the #live fragment in place. No reload, so scroll position,
// filters and open payloads stay; it holds off while someone is typing or selecting.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  var toggle = document.getElementById("live-toggle");
  if (!live) { if (toggle) toggle.hidden = true; return; }
  var every = Math.max(0.5, parseFloat(live.getAttribute("data-refresh")) || 5) * 1000;
  var paused = false, inFlight = false, last = null;

  function say(text) { if (status) status.textContent = text; }

  function userIsBusy() {
    var el = document.activeElement;
    // Typing a filter or about to press a button: a swap would steal the moment.
    if (el && el !== document.body && el.closest && el.closest("form, input, select, textarea")) {
      return "paused while you use a form";
    }
    var sel = window.getSelection && window.getSelection();
    if (sel && !sel.isCollapsed && live.contains(sel.anchorNode)) return "paused while text is selected";
    return document.hidden ? "paused in the background" : null;
  }

  function remember() {
    var open = [], scroll = [];
    live.querySelectorAll("details[open][data-key]").forEach(function (d) {
      open.push(d.getAttribute("data-key"));
    });
    live.querySelectorAll(".table-wrap").forEach(function (w) { scroll.push(w.scrollLeft); });
    return { open: open, scroll: scroll };
  }

  function restore(state) {
    state.open.forEach(function (key) {
      var d = live.querySelector('details[data-key="' + CSS.escape(key) + '"]');
      if (d) d.open = true;
    });
    live.querySelectorAll(".table-wrap").forEach(function (w, i) {
      if (state.scroll[i]) w.scrollLeft = state.scroll[i];
    });
  }

  function refresh() {
    if (paused || inFlight) return;
    var busy = userIsBusy();
    if (busy) { say(busy); return; }
    inFlight = true;
    fetch(window.location.href, {
      headers: { "X-Partial": "1" }, credentials: "same-origin", cache: "no-store",
      redirect: "error"
    }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.text();
    }).then(function (html) {
      if (html !== last && !userIsBusy()) {
        var state = remember();
        live.innerHTML = html;  // the server escaped every value; script tags never run here
        restore(state);
        last = html;
      }
      say("Live · updated " + new Date().toISOString().slice(11, 19) + " UTC");
    }).catch(function (err) {
      say("Update failed (" + err.message + "); retrying");
    }).then(function () { inFlight = false; });
  }

  if (toggle) {
    toggle.addEventListener("click", function () {
      paused = !paused;
      toggle.textContent = paused ? "Resume updates" : "Pause updates";
      say(paused ? "Paused" : "Live");
      if (!paused) refresh();
    });
  }
  say("Live · every " + every / 1000 + " s · times are UTC");
  window.setInterval(refresh, every);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
})();
