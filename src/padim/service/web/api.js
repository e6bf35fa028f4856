// padim pages: talking to the service. Shared by the inspection page and the studio.
"use strict";

// A service started with tokens (padim serve --auth on) answers 401 without one: ask for it
// once, keep it for this tab only (sessionStorage), and send it with every request.
const TOKEN_KEY = "padim-token";
async function api(url, options = {}) {
  const send = () => {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    return fetch(url, { ...options, headers });
  };
  let res = await send();
  if (res.status === 401) {
    const token = window.prompt("This service needs an API token (an operator's or higher):");
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token.trim());
      res = await send();
    }
  }
  return res;
}

// The JSON answer of a request, or an Error with the service's one-line message.
async function apiJson(url, options = {}) {
  const res = await api(url, options);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const error = new Error(body.error ? body.error.message : `HTTP ${res.status}`);
    error.status = res.status;
    throw error;
  }
  return body;
}

function postJson(url, payload) {
  return apiJson(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload),
  });
}
