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
  document.addEventListener("DOMContentLoaded", function () { drawCharts(document); });
  document.addEventListener("htmx:afterSettle", function (event) { drawCharts(event.target); });
  // Server errors on htmx requests are shown, not swallowed.
  document.addEventListener("htmx:responseError", function (event) {
    var box = document.getElementById("flash");
    if (box) {
      box.textContent = "The server answered " + event.detail.xhr.status + ". " +
        (event.detail.xhr.status === 403 ? "Reload the page and try again." : "");
    }
  });
})();
