// Admin page behaviours, as a static file because the CSP allows no inline script.
//
// [data-show-when="name=value"]: shown only while the form's field called ``name`` has
// ``value`` (a checkbox's value is "on" when ticked). A block holding errors stays shown.
//
// [data-confirm="what will happen"] on a submit button (or a form): asks first in a
// <dialog>; Cancel (or Escape) changes nothing, the confirm button (its label from
// data-confirm-button) submits the form with the same button.
//
// [data-copy="element id"] on a button: copies that element's text to the clipboard and
// says so on the button for a moment (where the browser allows the clipboard).
(function () {
  "use strict";

  function currentValue(form, name) {
    var fields = form.querySelectorAll("[name='" + name + "']");
    for (var i = 0; i < fields.length; i++) {
      var el = fields[i];
      if (el.type === "checkbox" || el.type === "radio") {
        if (el.checked) { return el.value; }
      } else {
        return el.value;
      }
    }
    return "";
  }

  function applyShowWhen(root) {
    root.querySelectorAll("[data-show-when]").forEach(function (block) {
      var form = block.closest("form");
      if (!form) { return; }
      var rule = block.getAttribute("data-show-when").split("=");
      var shown = currentValue(form, rule[0]) === rule[1] || block.classList.contains("invalid");
      block.hidden = !shown;
    });
  }

  function dialog() {
    var el = document.getElementById("confirm-dialog");
    if (el) { return el; }
    el = document.createElement("dialog");
    el.id = "confirm-dialog";
    el.className = "confirm";
    el.setAttribute("aria-labelledby", "confirm-dialog-text");
    el.innerHTML = '<form method="dialog"><p id="confirm-dialog-text"></p>' +
      '<div class="dialog-buttons"><button type="submit" value="cancel" class="secondary">Cancel</button> ' +
      '<button type="submit" value="confirm" class="danger"></button></div></form>';
    document.body.appendChild(el);
    return el;
  }

  function confirmThen(message, label, proceed) {
    var el = dialog();
    el.querySelector("#confirm-dialog-text").textContent = message;
    el.querySelector("button[value=confirm]").textContent = label;
    el.returnValue = "";
    el.addEventListener("close", function onClose() {
      el.removeEventListener("close", onClose);
      if (el.returnValue === "confirm") { proceed(); }
    });
    el.showModal();
    el.querySelector("button[value=cancel]").focus();
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.method === "dialog") { return; }
    var submitter = event.submitter;
    var asker = submitter && submitter.hasAttribute("data-confirm") ? submitter
      : (form.hasAttribute("data-confirm") ? form : null);
    if (!asker || form.dataset.confirmed === "yes") { return; }
    event.preventDefault();
    confirmThen(asker.getAttribute("data-confirm"),
      asker.getAttribute("data-confirm-button") || "Confirm", function () {
        form.dataset.confirmed = "yes";
        if (submitter) { form.requestSubmit(submitter); } else { form.requestSubmit(); }
        delete form.dataset.confirmed;  // the submit event ran synchronously
      });
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) { return; }
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source || !navigator.clipboard) { return; }
    var label = button.textContent;
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    });
  });

  document.addEventListener("change", function (event) {
    if (event.target.form) { applyShowWhen(event.target.form); }
  });
  document.addEventListener("DOMContentLoaded", function () { applyShowWhen(document); });
})();
