// The UI's only way to the cluster: same-origin requests through Admin Router, authenticated by
// the login's HttpOnly cookie (dcos-acs-auth-cookie). A 401 from any API parks the request, asks
// the session owner (the shell's login dialog) to log in again, then sends the request once more,
// so whatever the user was doing continues where it stopped.

export class ApiError extends Error {
  constructor(status, body, text) {
    super(messageOf(status, body, text));
    this.status = status;
    this.body = body;
  }
}

// One message per API's error shape: Marathon {message, details}, Cosmos {type, message, data},
// Admin Router / ACS {title, description}, Mesos-DNS {error}.
export function messageOf(status, body, text) {
  if (body && typeof body === "object") {
    if (body.message) return body.message;
    if (body.description) return body.description;
    if (body.error) return body.error;
  }
  return (text && text.trim()) || `HTTP ${status}`;
}

let reloginWaiters = null;     // resolvers of the requests waiting for the next successful login
const sessionListeners = new Set();

export function onSessionExpired(listener) {
  sessionListeners.add(listener);
  return () => sessionListeners.delete(listener);
}

function sessionExpired() {
  if (reloginWaiters === null) {
    reloginWaiters = [];
    sessionListeners.forEach((listener) => listener());
  }
  return new Promise((resolve) => reloginWaiters.push(resolve));
}

export async function login(uid, password) {
  const resp = await fetch("/acs/api/v1/auth/login", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({uid, password}),
  });
  const body = await readBody(resp);
  if (!resp.ok) throw new ApiError(resp.status, body.json, body.text);
  const waiters = reloginWaiters || [];
  reloginWaiters = null;
  waiters.forEach((resolve) => resolve());
  return body.json;
}

export async function logout() {
  await fetch("/acs/api/v1/auth/logout", {method: "POST", credentials: "same-origin"});
}

async function readBody(resp) {
  const text = await resp.text();
  try {
    return {text, json: text ? JSON.parse(text) : null};
  } catch {
    return {text, json: null};
  }
}

// request(path, {method, json, headers, noRelogin}) → parsed JSON (or null); ApiError otherwise.
export async function request(path, options = {}) {
  const headers = {...(options.headers || {})};
  let body;
  if (options.json !== undefined) {
    body = JSON.stringify(options.json);
    if (!headers["Content-Type"]) headers["Content-Type"] = "application/json";
  }
  for (;;) {
    const resp = await fetch(path, {method: options.method || "GET", headers, body, credentials: "same-origin"});
    if (resp.status === 401 && !options.noRelogin) {
      await sessionExpired();
      continue;
    }
    const parsed = await readBody(resp);
    if (!resp.ok) throw new ApiError(resp.status, parsed.json, parsed.text);
    return parsed.json;
  }
}

// Cosmos speaks versioned media types: application/vnd.dcos.package.<op>-request+json;…
const cosmosType = (name, version) => `application/vnd.dcos.package.${name}+json;charset=utf-8;version=${version}`;
const COSMOS_RESPONSE_VERSION = {describe: "v3", install: "v2"};

export function cosmos(op, json) {
  return request(`/package/${op}`, {
    method: "POST", json,
    headers: {"Content-Type": cosmosType(`${op}-request`, "v1"),
              "Accept": cosmosType(`${op}-response`, COSMOS_RESPONSE_VERSION[op] || "v1")},
  });
}

// Marathon's event stream, shared by every page: listeners get (type, data). EventSource
// reconnects by itself; after an error the session is checked (a 401 opens the login dialog).
const eventListeners = new Set();
let source = null;
export const recentEvents = [];       // newest last, at most 200: the service detail page's history

const EVENT_TYPES = ["status_update_event", "deployment_info", "deployment_success", "deployment_failed",
  "deployment_step_success", "deployment_step_failure", "api_post_event", "app_terminated_event",
  "health_status_changed_event", "instance_changed_event", "instance_health_changed_event",
  "failed_health_check_event", "group_change_success"];

export function startEvents() {
  if (source) return;
  source = new EventSource("/marathon/v2/events");
  const deliver = (type) => (message) => {
    let data = null;
    try { data = JSON.parse(message.data); } catch { data = {raw: message.data}; }
    recentEvents.push({type, at: new Date(), data});
    if (recentEvents.length > 200) recentEvents.shift();
    eventListeners.forEach((listener) => listener(type, data));
  };
  EVENT_TYPES.forEach((type) => source.addEventListener(type, deliver(type)));
  // Events sent while no stream was open (first connect, reconnect, a new login) are lost: every
  // list reloads when the stream opens.
  source.addEventListener("open", () => eventListeners.forEach((listener) => listener("stream_opened", null)));
  source.onerror = () => {
    if (source && source.readyState === EventSource.CLOSED) {
      source = null;
      request("/marathon/v2/info").then(() => startEvents(), () => {});
    }
  };
}

export function stopEvents() {
  if (source) source.close();
  source = null;
}

export function onEvent(listener) {
  eventListeners.add(listener);
  return () => eventListeners.delete(listener);
}
