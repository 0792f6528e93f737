// Small behaviours that would otherwise be inline handlers (the CSP allows no inline
// script): <select data-autosubmit> submits its form; <select data-navigate> goes to the
// chosen option's URL.
document.addEventListener("change", function (event) {
  var el = event.target;
  if (el.matches("select[data-autosubmit]")) {
    el.form.submit();
  } else if (el.matches("select[data-navigate]")) {
    window.location = el.value;
  }
});
