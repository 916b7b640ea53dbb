// toolgate console: confirmations, the transport switch of the register form, auto-refresh.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.dataset && form.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

// Show the fields of the chosen transport only; hidden fields are disabled so they are not sent.
function applySwitch(select) {
  const key = select.dataset.switch;
  const form = select.form;
  for (const group of form.querySelectorAll(`[data-when-${key}]`)) {
    const shown = group.getAttribute(`data-when-${key}`).split(" ").includes(select.value);
    group.hidden = !shown;
    for (const input of group.querySelectorAll("input, textarea, select")) input.disabled = !shown;
  }
}

document.addEventListener("change", (event) => {
  if (event.target.dataset && event.target.dataset.switch) applySwitch(event.target);
  const box = event.target;
  if (box.dataset && box.dataset.autorefresh) {
    sessionStorage.setItem("autorefresh:" + location.pathname, box.checked ? "1" : "");
    scheduleRefresh(box);
  }
});

let refreshTimer = null;
function scheduleRefresh(box) {
  clearTimeout(refreshTimer);
  if (box.checked) refreshTimer = setTimeout(() => location.reload(), Number(box.dataset.autorefresh));
}

document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("select[data-switch]")) applySwitch(select);
  for (const box of document.querySelectorAll("input[data-autorefresh]")) {
    box.checked = sessionStorage.getItem("autorefresh:" + location.pathname) === "1";
    scheduleRefresh(box);
  }
});
