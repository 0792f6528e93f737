// The ticket view's two behaviours (a static file: the CSP allows no inline script).
//
// <form data-submit-once>: the first submit goes; the form's buttons disable right after
// (not before: a disabled button would drop its own name=value, "Send and set Pending",
// from the post), and any later submit is dropped. The server refuses a second post of the
// same form anyway (its one-time token); this spares the agent the warning.
//
// <form data-confirm-dialog="ID">: submitting opens <dialog id=ID> instead, its
// [data-fill=NAME] elements showing the form's field NAME; the form is only sent when the
// dialog closes with the "confirm" button.
(function () {
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.matches("form[data-submit-once]")) {
      if (form.dataset.submitting) {
        event.preventDefault();
        return;
      }
      form.dataset.submitting = "1";
      window.setTimeout(function () {
        form.querySelectorAll("button[type=submit]").forEach(function (button) {
          button.disabled = true;
        });
      }, 0);
    } else if (form.matches("form[data-confirm-dialog]") && !form.dataset.confirmed) {
      var dialog = document.getElementById(form.dataset.confirmDialog);
      if (!dialog || typeof dialog.showModal !== "function") {
        return; // no <dialog> support: the plain form goes
      }
      event.preventDefault();
      dialog.querySelectorAll("[data-fill]").forEach(function (el) {
        var field = form.elements[el.dataset.fill];
        el.textContent = field ? field.value.trim().replace(/^#/, "") : "";
      });
      dialog.returnValue = "";
      dialog.onclose = function () {
        if (dialog.returnValue === "confirm") {
          form.dataset.confirmed = "1";
          form.submit();
        }
      };
      dialog.showModal();
    }
  });
  // Back to a page kept in the browser's cache: its forms can be used again.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) {
      return;
    }
    document.querySelectorAll("form[data-submit-once]").forEach(function (form) {
      delete form.dataset.submitting;
      form.querySelectorAll("button[type=submit]").forEach(function (button) {
        button.disabled = false;
      });
    });
  });
})();
