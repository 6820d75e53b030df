// Packages (Cosmos): the catalogue, one package's description and its install form generated
// from the options schema (checked here first; Cosmos' JsonSchemaMismatch errors go next to the
// fields they name), and the installed packages with uninstall.
import {useState} from "preact/hooks";
import {html} from "./html.js";
import {ApiError, cosmos} from "./api.js";
import {useLive} from "./live.js";
import {SchemaFields, defaultsOf, setAt, validateOptions} from "./forms.js";

const DRAFT_PREFIX = "navstar.options.";

function cosmosFieldErrors(err) {
  const errors = {};
  const entries = err instanceof ApiError && err.body?.data?.errors ? err.body.data.errors : [];
  for (const entry of entries) {
    const pointer = entry.instance?.pointer ?? "";
    if (entry.keyword === "required" && entry.missing) {
      entry.missing.forEach((name) => { errors[`${pointer}/${name}`] = "required"; });
    } else {
      errors[pointer] = entry.message || entry.keyword;
    }
  }
  errors.form = err.message;
  return errors;
}

function InstallForm({pkg, onInstalled}) {
  const schema = pkg.config || {type: "object", properties: {}};
  const draftKey = DRAFT_PREFIX + pkg.name;
  const [options, setOptions] = useState(() => {
    const saved = sessionStorage.getItem(draftKey);
    return saved ? JSON.parse(saved) : (defaultsOf(schema) || {});
  });
  const [errors, setErrors] = useState({});
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState(null);
  const change = (pointer, value) => {
    const next = setAt(options, pointer, value);
    sessionStorage.setItem(draftKey, JSON.stringify(next));
    setOptions(next);
  };
  const submit = async (event) => {
    event.preventDefault();
    const problems = validateOptions(schema, options);
    if (Object.keys(problems).length) {
      setErrors({...problems, form: "Fix the marked options; nothing was sent."});
      return;
    }
    setBusy(true);
    setErrors({});
    try {
      const answer = await cosmos("install", {packageName: pkg.name, packageVersion: pkg.version, options});
      sessionStorage.removeItem(draftKey);
      setDone(answer);
      onInstalled();
    } catch (err) {
      setErrors(cosmosFieldErrors(err));
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="install" id="install-form" onSubmit=${submit} noValidate aria-labelledby="install-title">
    <h2 id="install-title">Install ${pkg.name} ${pkg.version}</h2>
    <${SchemaFields} schema=${schema} value=${options} errors=${errors} onChange=${change} />
    ${errors.form && html`<p class="error" role="alert" id="install-error">${errors.form}</p>`}
    ${done && html`<p class="ok" role="status" id="install-done">Installed as ${done.appId}.
      ${done.postInstallNotes ? " " + done.postInstallNotes : ""}</p>`}
    <div class="buttons"><button type="submit" id="install-submit" disabled=${busy}>Install</button>
      <button type="button" onClick=${() => { sessionStorage.removeItem(draftKey); setOptions(defaultsOf(schema) || {}); setErrors({}); }}>
        Reset to defaults</button></div>
  </form>`;
}

function PackageDetail({name, onInstalled}) {
  const {data, error} = useLive(() => cosmos("describe", {packageName: name}), [name], {events: false});
  if (error) return html`<p class="error" role="alert">${error.message}</p>`;
  if (!data) return html`<p>Loading ${name}…</p>`;
  const pkg = data.package;
  return html`<article class="package-detail" id="package-detail" aria-labelledby="package-title">
    <h2 id="package-title">${pkg.name} <span class="small">${pkg.version}</span></h2>
    <p>${pkg.description}</p>
    ${pkg.preInstallNotes && html`<p class="note">${pkg.preInstallNotes}</p>`}
    <p class="small">maintainer ${pkg.maintainer || "?"} · ${(pkg.tags || []).join(", ")}</p>
    <${InstallForm} key=${pkg.name} pkg=${pkg} onInstalled=${onInstalled} />
  </article>`;
}

function Installed({refresh}) {
  const {data, error} = useLive(() => cosmos("list", {}), [refresh]);
  const [problem, setProblem] = useState(null);
  const [busy, setBusy] = useState(null);
  const uninstall = async (item) => {
    setBusy(item.appId);
    setProblem(null);
    try {
      await cosmos("uninstall", {packageName: item.packageInformation.packageDefinition.name, appId: item.appId});
    } catch (err) {
      setProblem(err);
    } finally {
      setBusy(null);
    }
  };
  return html`<section aria-labelledby="installed-title"><h2 id="installed-title">Installed</h2>
    ${(error || problem) && html`<p class="error" role="alert">${(error || problem).message}</p>`}
    ${data && (data.packages.length ? html`<div class="table-wrap"><table id="installed-table"><thead><tr><th>App</th>
        <th>Package</th><th>Version</th><th></th></tr></thead><tbody>
      ${data.packages.map((item) => html`<tr data-app-id=${item.appId}>
        <td data-label="App"><a href=${"#/services" + item.appId}>${item.appId}</a></td>
        <td data-label="Package">${item.packageInformation.packageDefinition.name}</td>
        <td data-label="Version">${item.packageInformation.packageDefinition.version}</td>
        <td><button class="danger uninstall" disabled=${busy === item.appId} onClick=${() => uninstall(item)}
                    aria-label=${`Uninstall ${item.appId}`}>Uninstall</button></td></tr>`)}
      </tbody></table></div>` : html`<p id="installed-none">No packages installed.</p>`)}
  </section>`;
}

export function PackagesPage() {
  const [selected, setSelected] = useState(sessionStorage.getItem("navstar.package") || null);
  const [refresh, setRefresh] = useState(0);
  const {data, error} = useLive(() => cosmos("search", {query: ""}), [], {events: false});
  const select = (name) => {
    sessionStorage.setItem("navstar.package", name);
    setSelected(name);
  };
  return html`<section aria-labelledby="packages-title"><h1 id="packages-title">Packages</h1>
    ${error && html`<p class="error" role="alert">${error.message}</p>`}
    <div class="packages-layout">
      <ul class="catalogue" id="catalogue" aria-label="Catalogue">
        ${(data?.packages || []).map((p) => html`<li><button class=${"package" + (p.name === selected ? " selected" : "")}
             data-package=${p.name} aria-pressed=${p.name === selected} onClick=${() => select(p.name)}>
          <strong>${p.name}</strong> <span class="small">${p.currentVersion}</span>
          <span class="description">${p.description}</span></button></li>`)}
      </ul>
      <div>${selected ? html`<${PackageDetail} key=${selected} name=${selected} onInstalled=${() => setRefresh((n) => n + 1)} />`
        : html`<p class="hint">Pick a package to read about it and install it.</p>`}</div>
    </div>
    <${Installed} refresh=${refresh} />
  </section>`;
}
