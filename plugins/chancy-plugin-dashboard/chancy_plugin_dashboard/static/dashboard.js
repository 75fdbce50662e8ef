// Live updates: the server sends the live part of the page (already escaped HTML it
// rendered itself) over server-sent events whenever it changes. No inline script runs:
// the Content-Security-Policy forbids it.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var here = location.pathname.replace(/\/+$/, "");
  document.querySelectorAll("nav a").forEach(function (a) {
    var target = new URL(a.href).pathname.replace(/\/+$/, "");
    if (target === here) a.classList.add("current");
  });
  if (!live || !live.dataset.events || !window.EventSource) return;
  var source = new EventSource(live.dataset.events);
  source.addEventListener("update", function (event) {
    var focused = document.activeElement;
    if (focused && live.contains(focused) && (focused.tagName === "INPUT" || focused.tagName === "SELECT")) {
      return; // never swap a form the user is typing in; the next change brings it up to date
    }
    live.innerHTML = event.data;
    live.dataset.updated = String(Date.now());
  });
})();
