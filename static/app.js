// cbdash front-end glue: toasts for htmx notices and errors. No inline scripts (CSP).
(function () {
  "use strict";
  function toast(message, kind) {
    var box = document.getElementById("toasts");
    if (!box || !message) return;
    var el = document.createElement("div");
    el.className = "toast" + (kind === "error" ? " toast-error" : "");
    el.setAttribute("role", kind === "error" ? "alert" : "status");
    el.textContent = message;
    box.appendChild(el);
    setTimeout(function () { el.remove(); }, 5000);
  }
  document.addEventListener("cbdash:notice", function (e) { toast(e.detail && e.detail.value, "notice"); });
  document.addEventListener("cbdash:error", function (e) { toast(e.detail && e.detail.value, "error"); });
  document.addEventListener("htmx:responseError", function (e) {
    var xhr = e.detail.xhr;
    if (xhr && xhr.getResponseHeader("HX-Trigger")) return; // the server explained it already
    toast("The request failed (" + (xhr ? xhr.status : "?") + "). Please reload the page.", "error");
  });
  document.addEventListener("htmx:sendError", function () {
    toast("Cannot reach the server. Check your connection and try again.", "error");
  });
})();
