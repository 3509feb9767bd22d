// Engage dialog and campaign builder behaviour; every page also works without it.
(function () {
  "use strict";
  var opener = null;

  function openDialog(button) {
    var form = button.form;
    var error = document.getElementById("groups-error");
    if (!form.querySelector('input[name="groups"]:checked')) {
      error.textContent = "Choose at least one group";
      error.hidden = false;
      form.querySelector('input[name="groups"]').focus();
      return;
    }
    error.hidden = true;
    var dialog = document.getElementById(button.dataset.openDialog);
    opener = button;
    if (dialog.open) dialog.close();
    dialog.showModal();
    var first = dialog.querySelector("input, select, textarea, button");
    if (first) first.focus();
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-open-dialog]");
    if (button) {
      event.preventDefault();
      openDialog(button);
      return;
    }
    var closer = event.target.closest("[data-close-dialog]");
    if (closer) closer.closest("dialog").close();
  });

  document.addEventListener("DOMContentLoaded", function () {
    // Opened by the server (no script ran for Proceed): make it modal, so Escape closes it.
    document.querySelectorAll("dialog[open]").forEach(function (dialog) {
      dialog.close();
      dialog.showModal();
      var first = dialog.querySelector("input, select, textarea, button");
      if (first) first.focus();
    });
    document.querySelectorAll("dialog").forEach(function (dialog) {
      dialog.addEventListener("close", function () {
        var back = opener || document.querySelector("[data-open-dialog]");
        if (back) back.focus();
      });
    });
  });

  // In the builder, Enter in a one-line field must not press the form's first button.
  document.addEventListener("keydown", function (event) {
    var t = event.target;
    if (event.key !== "Enter" || t.tagName !== "INPUT" || !t.form || t.form.id !== "builder") return;
    if (["submit", "button", "checkbox", "radio"].indexOf(t.type) === -1) event.preventDefault();
  });

  // After the builder is re-rendered (a row or variant added or removed), focus moves
  // to the control the server names.
  document.addEventListener("htmx:afterSettle", function () {
    var form = document.getElementById("builder");
    if (!form || !form.dataset.focus) return;
    var target = document.getElementById(form.dataset.focus);
    form.dataset.focus = "";
    if (target && !target.matches("input, select, textarea, button")) {
      target = target.querySelector("input, select, textarea, button");
    }
    if (target) target.focus();
  });
})();
