// Journey editor behaviour; the editor also works without it (the server keeps the
// connections of a renamed step when the form is posted).
(function () {
  "use strict";
  // Enter in a one-line field must not press the form's first button (Remove path…).
  document.addEventListener("keydown", function (event) {
    var t = event.target;
    if (event.key !== "Enter" || t.tagName !== "INPUT" || !t.form || t.form.id !== "journey-editor") return;
    if (["submit", "button", "checkbox", "radio"].indexOf(t.type) === -1) event.preventDefault();
  });

  // Renaming a step renames it in every connection list at once.
  document.addEventListener("input", function (event) {
    var input = event.target;
    if (!input.matches || !input.matches('.step input[name$=".id"]')) return;
    var old = input.dataset.current || input.defaultValue;
    var name = input.value.trim();
    if (!old || !name || old === name) return;
    document.querySelectorAll("select.target option").forEach(function (option) {
      if (option.value === old) {
        option.value = name;
        option.textContent = name + option.textContent.slice(old.length);
      }
    });
    input.dataset.current = name;
  });
})();
