// The login view: the team's API key, checked against the API, kept for this tab only.

import { ApiError, call, logIn } from "./api.js";
import { h } from "./dom.js";

export async function loginPage(view, main, { query }) {
  const input = h("input", {
    type: "password",
    id: "api-key",
    name: "key",
    autocomplete: "off",
    placeholder: "vr1_…",
    required: true,
  });
  const message = h("p", { class: "login-error", role: "alert" });
  const button = h("button", { type: "submit", class: "button primary" }, "Log in");
  const form = h(
    "form",
    { class: "login card" },
    h("h1", {}, "Vision-R1 platform"),
    h("p", { class: "muted" }, "Enter your team's API key. It is kept in this tab only."),
    h("label", { for: "api-key" }, "API key"),
    input,
    button,
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    message.textContent = "";
    button.disabled = true;
    try {
      await call("/v1/jobs", { params: { limit: 1 }, key });
      logIn(key);
      const next = query.get("next") || "";
      location.hash = next.startsWith("#/") && !next.startsWith("#/login") ? next : "#/jobs";
    } catch (error) {
      const invalid = error instanceof ApiError && error.status === 401;
      message.textContent = invalid ? "Invalid key." : `Could not check the key: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });
  view.show(main, h("div", { class: "login-page" }, form));
  input.focus();
}
