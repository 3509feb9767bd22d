// Charts are declared in the page: <canvas data-chart='{"type": ..., "data": ...}'>.
// They are drawn on load and again after every htmx swap.
(function () {
  "use strict";
  function drawCharts(root) {
    if (!window.Chart) return;
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (canvas.dataset.drawn) return;
      canvas.dataset.drawn = "1";
      var config = JSON.parse(canvas.dataset.chart);
      config.options = Object.assign({ responsive: true, maintainAspectRatio: false,
                                       animation: false }, config.options || {});
      new window.Chart(canvas, config);
    });
  }
  // A table wider than the screen scrolls inside its wrapper; keyboard users must be
  // able to reach that scroll, so such a wrapper becomes a focusable, named region.
  function labelScrollers(root) {
    root.querySelectorAll(".table-wrap").forEach(function (wrap) {
      if (wrap.scrollWidth <= wrap.clientWidth || wrap.hasAttribute("tabindex")) return;
      var caption = wrap.querySelector("caption");
      var heading = wrap.closest("section, .card");
      heading = heading && heading.querySelector("h2, h3");
      wrap.setAttribute("tabindex", "0");
      wrap.setAttribute("role", "region");
      wrap.setAttribute("aria-label", (caption || heading || {}).textContent || "Table");
    });
  }
  function enhance(root) { drawCharts(root); labelScrollers(root); }
  document.addEventListener("DOMContentLoaded", function () { enhance(document); });
  document.addEventListener("htmx:afterSettle", function (event) { enhance(event.target); });
  window.addEventListener("resize", function () { labelScrollers(document); });
  // Server errors on htmx requests are shown, not swallowed.
  document.addEventListener("htmx:responseError", function (event) {
    var box = document.getElementById("flash");
    if (box) {
      box.textContent = "The server answered " + event.detail.xhr.status + ". " +
        (event.detail.xhr.status === 403 ? "Reload the page and try again." : "");
    }
  });
})();
