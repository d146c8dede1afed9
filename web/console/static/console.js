// Live updates: a page with data-live="<url>" on <main> or an element listens to the
// console's server-sent events and swaps in the fragments the server sends
// (event "fragment": JSON {"id": element id, "html": markup}). No build step.
(function () {
  "use strict";
  function confirmForms() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { ev.preventDefault(); }
      });
    });
  }
  function live() {
    var el = document.querySelector("[data-live]");
    if (!el || !window.EventSource) { return; }
    var status = document.getElementById("live-status");
    var source = new EventSource(el.getAttribute("data-live"));
    source.addEventListener("fragment", function (ev) {
      var data = JSON.parse(ev.data);
      (data.fragments || []).forEach(function (f) {
        var target = document.getElementById(f.id);
        if (target) { target.innerHTML = f.html; }
      });
      if (status) { status.textContent = "Live · updated " + (data.at || ""); }
    });
    source.onerror = function () { if (status) { status.textContent = "Live · reconnecting…"; } };
  }
  document.addEventListener("DOMContentLoaded", function () { confirmForms(); live(); });
})();
