// Monitoring auto-refresh. Fires "cbdash:poll" on #monitoring-live (whose hx-trigger listens
// for it) every data-poll-seconds while the tab is visible; nothing while hidden, and one
// catch-up request when it becomes visible again. The element's hx-sync="this:drop" and the
// in-flight check here keep at most one request outstanding. No eval, no inline script (CSP).
(function () {
  "use strict";
  var last = Date.now();

  function live() { return document.getElementById("monitoring-live"); }

  function period(el) {
    var s = parseInt(el.getAttribute("data-poll-seconds"), 10);
    return (isNaN(s) || s < 1 ? 10 : s) * 1000;
  }

  function poll(force) {
    var el = live();
    if (!el || !window.htmx || document.visibilityState !== "visible") return;
    if (el.classList.contains("htmx-request")) return; // one in flight at most
    if (!force && Date.now() - last < period(el)) return;
    last = Date.now();
    window.htmx.trigger(el, "cbdash:poll");
  }

  setInterval(function () { poll(false); }, 1000);
  document.addEventListener("visibilitychange", function () { poll(false); });
  // Any swap of the live area (poll, window switch, paging) restarts the countdown.
  document.addEventListener("htmx:afterSwap", function (e) {
    if (e.detail && e.detail.target && e.detail.target.id === "monitoring-live") last = Date.now();
  });
})();
