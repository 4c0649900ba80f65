// crane-operator dashboard: follows the view the server renders (server-sent events) and
// sends the actions, each after a confirmation. No framework, no build step.
"use strict";

const ACTION_HEADER = "X-Crane-Dashboard";

function notice(text, failed) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = failed ? "failed" : "succeeded";
  box.hidden = false;
}

// Replaces the view, keeping the focus on the element of the same id (keyboard users).
function show(html) {
  const focused = document.activeElement && document.activeElement.id;
  const replicas = document.getElementById("replicas");
  const editing = replicas && replicas === document.activeElement ? replicas.value : null;
  document.getElementById("view").innerHTML = html;
  if (focused) {
    const again = document.getElementById(focused);
    if (again) again.focus();
  }
  if (editing !== null) {
    const input = document.getElementById("replicas");
    if (input) input.value = editing;
  }
}

function follow() {
  const status = document.getElementById("connection");
  const source = new EventSource(document.body.dataset.live);
  source.addEventListener("view", (e) => show(e.data));
  source.onopen = () => { status.textContent = "live"; };
  source.onerror = () => {
    // A refused stream (403: a dashboard started again has a new token) is not retried.
    if (source.readyState === EventSource.CLOSED) {
      status.textContent = "disconnected";
      notice("This page is no longer let in (was the dashboard started again?): open the URL it printed.", true);
    } else {
      status.textContent = "reconnecting…";
    }
  };
}

// Resolves true when the user confirms `text`.
function confirmed(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  // Escape closes the dialog without touching returnValue: it must not still say "ok"
  // from the last confirmation.
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    document.getElementById("confirm-ok").focus();
  });
}

async function act(question, path, body) {
  if (!(await confirmed(question))) return;
  let answer;
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", [ACTION_HEADER]: "1" },
      body: JSON.stringify(body || {}),
    });
    answer = await response.json().catch(() => ({ error: response.statusText }));
    if (response.status === 403) {
      notice("Forbidden: " + answer.error, true);
      return;
    }
    if (!response.ok) {
      notice("Failed (" + response.status + "): " + answer.error, true);
      return;
    }
  } catch (e) {
    notice("The dashboard does not answer: " + e, true);
    return;
  }
  notice(answer.message, false);
}

function base(el) {
  return "/api/namespaces/" + encodeURIComponent(el.dataset.namespace);
}

document.addEventListener("submit", (e) => {
  const form = e.target;
  if (form.id !== "scale") return;
  e.preventDefault();
  const replicas = parseInt(form.elements.replicas.value, 10);
  act("Scale " + form.dataset.name + " to " + replicas + " replicas?",
    base(form) + "/cranereplicasets/" + encodeURIComponent(form.dataset.name) + "/scale",
    { replicas });
});

document.addEventListener("click", (e) => {
  const button = e.target.closest("button");
  if (!button) return;
  if (button.id === "restart") {
    act("Restart " + button.dataset.name + "? Its pods are replaced a few at a time.",
      base(button) + "/cranereplicasets/" + encodeURIComponent(button.dataset.name) + "/restart");
  } else if (button.classList.contains("delete-pod")) {
    act("Delete pod " + button.dataset.pod + "? The CraneReplicaSet will create a replacement.",
      base(button) + "/pods/" + encodeURIComponent(button.dataset.pod) + "/delete",
      { uid: button.dataset.uid });
  } else if (button.id === "theme") {
    const dark = document.documentElement.dataset.theme !== "dark" &&
      !(document.documentElement.dataset.theme !== "light" &&
        window.matchMedia("(prefers-color-scheme: dark)").matches);
    setTheme(dark ? "dark" : "light");
  }
});

function setTheme(theme) {
  document.documentElement.dataset.theme = theme;
  try { localStorage.setItem("crane-theme", theme); } catch (_) { /* private mode */ }
  document.getElementById("theme").textContent = theme === "dark" ? "Light" : "Dark";
}

document.addEventListener("DOMContentLoaded", () => {
  let theme = null;
  try { theme = localStorage.getItem("crane-theme"); } catch (_) { /* private mode */ }
  if (!theme && window.matchMedia("(prefers-color-scheme: dark)").matches) theme = "dark";
  setTheme(theme || "light");
  follow();
});
