// The console's only script: live regions refetch their server-rendered fragment, and forms marked
// data-autosubmit submit when a control changes. Everything else works without it.
"use strict";

function refresh(region) {
  const every = Number(region.dataset.every || "10") * 1000;
  const tick = async () => {
    try {
      const answer = await fetch(region.dataset.refresh, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
      if (answer.status === 401 || answer.url.includes("/console/login")) {
        window.location.reload();
        return;
      }
      if (answer.ok) {
        region.innerHTML = await answer.text();
        region.dataset.refreshed = String(Date.now());
      }
    } catch (err) {
      region.dataset.failed = String(err);
    }
    if (!region.querySelector("[data-final]")) {
      window.setTimeout(tick, every);
    }
  };
  if (!region.querySelector("[data-final]")) {
    window.setTimeout(tick, every);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refresh);
  document.querySelectorAll("form[data-autosubmit]").forEach((form) => {
    form.addEventListener("change", () => form.requestSubmit());
  });
});

document.addEventListener("input", (event) => {
  const slider = event.target;
  if (slider instanceof HTMLInputElement && slider.type === "range") {
    const shown = slider.parentElement && slider.parentElement.querySelector("output");
    if (shown) {
      shown.textContent = Number(slider.value).toFixed(2);
    }
  }
});
