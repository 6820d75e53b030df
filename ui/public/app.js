// The shell: login, navigation (hash routes), the login dialog shown when a session expires, and
// the pages. Every page reads the APIs through Admin Router (api.js); lists refresh on Marathon's
// events. See ui/README.md for which page reads which API.
import {render} from "preact";
import {useEffect, useState} from "preact/hooks";
import {html} from "./html.js";
import {login, logout, onSessionExpired, request, startEvents, stopEvents} from "./api.js";
import {ServicesPage, ServiceDetailPage} from "./services.js";
import {NodesPage, NetworkPage} from "./cluster.js";
import {PackagesPage} from "./packages.js";

function useRoute() {
  const read = () => (window.location.hash || "#/services").slice(1);
  const [route, setRoute] = useState(read());
  useEffect(() => {
    const changed = () => setRoute(read());
    window.addEventListener("hashchange", changed);
    return () => window.removeEventListener("hashchange", changed);
  }, []);
  return route;
}

function LoginForm({onDone, title, note}) {
  const [uid, setUid] = useState(sessionStorage.getItem("navstar.uid") || "");
  const [password, setPassword] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await login(uid.trim(), password);
      sessionStorage.setItem("navstar.uid", uid.trim());
      setPassword("");
      onDone();
    } catch (err) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="login" onSubmit=${submit} aria-labelledby="login-title">
    <h1 id="login-title">${title}</h1>
    ${note && html`<p class="note">${note}</p>`}
    <div class="field"><label for="login-uid">User</label>
      <input id="login-uid" name="uid" autocomplete="username" value=${uid} required
             onInput=${(e) => setUid(e.target.value)} /></div>
    <div class="field"><label for="login-password">Password</label>
      <input id="login-password" name="password" type="password" autocomplete="current-password"
             value=${password} required onInput=${(e) => setPassword(e.target.value)} /></div>
    ${error && html`<p class="error" role="alert" id="login-error">${error}</p>`}
    <button type="submit" id="login-submit" disabled=${busy}>Log in</button>
  </form>`;
}

const PAGES = [
  ["services", "Services"], ["nodes", "Nodes"], ["network", "Network"], ["packages", "Packages"],
];

function Shell({route, onLogout}) {
  const [section, ...rest] = route.replace(/^\//, "").split("/");
  let page;
  if (section === "services" && rest.length) page = html`<${ServiceDetailPage} appId=${"/" + rest.map(decodeURIComponent).join("/")} />`;
  else if (section === "nodes") page = html`<${NodesPage} />`;
  else if (section === "network") page = html`<${NetworkPage} />`;
  else if (section === "packages") page = html`<${PackagesPage} />`;
  else page = html`<${ServicesPage} />`;
  return html`<div class="shell">
    <header class="top">
      <span class="brand">navstar</span>
      <nav aria-label="Pages">
        ${PAGES.map(([key, label]) => html`<a href=${"#/" + key} id=${"nav-" + key}
             aria-current=${(section || "services") === key ? "page" : undefined}>${label}</a>`)}
      </nav>
      <button class="link" id="logout" onClick=${onLogout}>Log out</button>
    </header>
    <main id="page">${page}</main>
  </div>`;
}

function App() {
  const route = useRoute();
  const [session, setSession] = useState("checking");    // checking | out | in
  const [expired, setExpired] = useState(false);

  useEffect(() => {
    request("/marathon/v2/info", {noRelogin: true}).then(() => setSession("in"), (err) => {
      setSession(err.status === 401 ? "out" : "in");
    });
    return onSessionExpired(() => setExpired(true));
  }, []);
  useEffect(() => {
    if (session === "in") startEvents();
    else stopEvents();
  }, [session]);

  if (session === "checking") return html`<p class="loading">Loading…</p>`;
  if (session === "out") {
    return html`<div class="center"><${LoginForm} title="Log in to navstar" onDone=${() => setSession("in")} /></div>`;
  }
  const doLogout = async () => {
    await logout();
    stopEvents();
    setSession("out");
  };
  // An expired session keeps the page (and what was typed in it) mounted under the dialog; the
  // request that met the 401 is sent again once the login succeeds.
  return html`<${Shell} route=${route} onLogout=${doLogout} />
    ${expired && html`<div class="overlay" role="dialog" aria-modal="true" aria-labelledby="login-title">
      <${LoginForm} title="Session expired" note="Log in again to continue; what you typed is kept."
                    onDone=${() => { setExpired(false); stopEvents(); startEvents(); }} /></div>`}`;
}

// A page being left closes its event stream at once, so its connection is not still held (the
// browser allows six per host) when the next page loads.
window.addEventListener("pagehide", stopEvents);
render(html`<${App} />`, document.getElementById("app"));
