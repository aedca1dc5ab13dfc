// cbdash front-end glue. No inline scripts anywhere (the CSP forbids them): every behaviour
// here is progressive — the pages work without it, this only makes them quicker to use.
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

  // Test ping: show "sending…" in the row the moment the button is pressed, before the
  // server has answered; the server's fragment then replaces it and polls for the result.
  document.addEventListener("htmx:beforeRequest", function (e) {
    var form = e.detail.elt;
    var id = form && form.getAttribute && form.getAttribute("data-ping-result");
    if (!id) return;
    var box = document.getElementById(id);
    if (!box) return;
    box.className = "ping-result ping-sending";
    box.textContent = "";
    var spin = document.createElement("span");
    spin.className = "spinner";
    spin.setAttribute("aria-hidden", "true");
    box.appendChild(spin);
    box.appendChild(document.createTextNode(" sending…"));
  });

  // A ping request that fails (the server refused it, the network is down, it timed out or
  // was cancelled) must not leave its row saying "sending…" forever: the row says what went
  // wrong instead. Covers the "Send test ping" post and the result polling that follows it.
  function pingBoxOf(elt) {
    if (!elt || !elt.getAttribute) return null;
    var id = elt.getAttribute("data-ping-result");
    if (id) return document.getElementById(id);
    if (elt.classList.contains("ping-result")) return elt; // the polling "sending…" fragment
    return null;
  }
  function serverMessage(xhr) {
    var header = xhr && xhr.getResponseHeader && xhr.getResponseHeader("HX-Trigger");
    if (!header) return "";
    try {
      var value = JSON.parse(header)["cbdash:error"];
      return typeof value === "string" ? value : "";
    } catch (err) {
      return "";
    }
  }
  function pingFailed(e, reason) {
    var elt = e.detail.elt;
    var box = pingBoxOf(elt);
    if (!box || !box.classList.contains("ping-sending")) return;
    var polling = box === elt;
    var pollUrl = polling ? box.getAttribute("hx-get") : null;
    ["hx-get", "hx-trigger", "hx-swap"].forEach(function (a) { box.removeAttribute(a); });
    box.className = "ping-result ping-fail";
    box.setAttribute("role", "alert");
    box.textContent = "";
    var line = document.createElement("div");
    line.className = "ping-line";
    var label = document.createElement("span");
    label.className = "ping-label";
    label.textContent = "Test ping";
    var icon = document.createElement("span");
    icon.className = "ping-icon";
    icon.setAttribute("aria-hidden", "true");
    icon.textContent = "✕";
    var what = document.createElement("strong");
    what.className = "ping-error";
    what.textContent = polling ? "Result unavailable" : "Not sent";
    var detail = document.createElement("span");
    detail.className = "ping-detail";
    detail.textContent = "· " + reason;
    [label, icon, what, detail].forEach(function (n) { line.appendChild(n); line.appendChild(document.createTextNode(" ")); });
    if (pollUrl && window.htmx) {
      // The ping itself was queued: offer to ask for its result again.
      var again = document.createElement("button");
      again.type = "button";
      again.className = "btn btn-sm";
      again.textContent = "Check again";
      again.setAttribute("hx-get", pollUrl.replace(/([?&])n=\d+/, "$1n=0"));
      again.setAttribute("hx-target", "#" + box.id);
      again.setAttribute("hx-swap", "outerHTML");
      line.appendChild(again);
      box.appendChild(line);
      window.htmx.process(again);
      return;
    }
    box.appendChild(line);
  }
  document.addEventListener("htmx:responseError", function (e) {
    var xhr = e.detail.xhr;
    var status = xhr ? xhr.status : "?";
    pingFailed(e, serverMessage(xhr) || "the server answered " + status + ". Reload the page and try again.");
  });
  document.addEventListener("htmx:sendError", function (e) {
    pingFailed(e, "cannot reach the server. Check your connection and try again.");
  });
  document.addEventListener("htmx:timeout", function (e) {
    pingFailed(e, "the server did not answer in time. Try again.");
  });
  document.addEventListener("htmx:sendAbort", function (e) {
    pingFailed(e, "the request was cancelled. Try again.");
  });

  // Callback form: the "HTTPS recommended" note follows the URL as it is typed.
  function syncHttpWarning(input) {
    var note = document.getElementById(input.getAttribute("data-http-warning"));
    if (note) note.hidden = !/^\s*http:\/\//i.test(input.value);
  }
  document.addEventListener("input", function (e) {
    var t = e.target;
    if (t && t.hasAttribute && t.hasAttribute("data-http-warning")) syncHttpWarning(t);
  });

  // Row "more actions" menus (<details>): one open at a time; click outside or Escape closes.
  function closeMenus(except) {
    document.querySelectorAll("details.row-menu[open]").forEach(function (d) {
      if (d !== except) d.removeAttribute("open");
    });
  }
  document.addEventListener("click", function (e) {
    var menu = e.target.closest && e.target.closest("details.row-menu");
    closeMenus(menu);
  });
  document.addEventListener("keydown", function (e) {
    if (e.key !== "Escape") return;
    var open = document.querySelector("details.row-menu[open]");
    if (!open) return;
    open.removeAttribute("open");
    open.querySelector("summary").focus();
  });

  // Catalogue links fill the definition field instead of reloading the form.
  document.addEventListener("click", function (e) {
    var link = e.target.closest && e.target.closest("a[data-fill]");
    if (!link) return;
    var field = document.getElementById(link.getAttribute("data-fill"));
    if (!field) return;
    e.preventDefault();
    field.value = link.getAttribute("data-value");
    field.dispatchEvent(new Event("input", { bubbles: true }));
    field.focus();
  });
})();
