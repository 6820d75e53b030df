// Services (Marathon apps): the list with scale / restart / destroy, the create form, and one
// service's detail (tasks, VIPs with backends, DNS names, events).
import {useEffect, useState} from "preact/hooks";
import {html} from "./html.js";
import {ApiError, recentEvents, request} from "./api.js";
import {age, useLive} from "./live.js";
import {checkAppId, checkNumber, dnsLabel, vipName} from "./forms.js";

const enc = (appId) => appId.replace(/^\//, "").split("/").map(encodeURIComponent).join("/");
export const detailHref = (appId) => `#/services/${enc(appId)}`;

function status(app) {
  if ((app.deployments || []).length) return "Deploying";
  if (app.instances === 0) return "Suspended";
  if (app.tasksRunning >= app.instances) return "Running";
  return "Waiting";
}

export function vipNamesOf(app) {
  const names = [];
  (app.portDefinitions || []).forEach((port) => {
    Object.entries(port.labels || {}).forEach(([key, value]) => {
      const match = /^VIP_\d+$/.test(key) && /^(\/?[^:]+):(\d+)$/.exec(value);
      if (match && !/^\d+\.\d+\.\d+\.\d+$/.test(match[1])) names.push(vipName(match[1], match[2]));
    });
  });
  return names;
}

function ErrorNote({error}) {
  return error ? html`<p class="error" role="alert">${error.message}</p>` : null;
}

function AppRow({app}) {
  const [scaleTo, setScaleTo] = useState(String(app.instances));
  const [confirming, setConfirming] = useState(false);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const appPath = `/marathon/v2/apps/${enc(app.id)}`;
  const act = (fn) => async () => {
    setBusy(true);
    setError(null);
    try {
      await fn();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  const scale = act(async () => {
    const problem = checkNumber(scaleTo, {min: 0, integer: true});
    if (problem) throw new Error(`instances: ${problem}`);
    await request(appPath, {method: "PUT", json: {instances: Number(scaleTo)}});
  });
  const restart = act(() => request(`${appPath}/restart`, {method: "POST", json: {}}));
  const destroy = act(async () => {
    await request(appPath, {method: "DELETE"});
    setConfirming(false);
  });
  const scaleId = `scale-${dnsLabel(app.id)}`;
  return html`<tr data-app-id=${app.id}>
    <td data-label="Service"><a href=${detailHref(app.id)}>${app.id}</a>
      ${vipNamesOf(app).map((name) => html`<div class="vip-name">${name}</div>`)}</td>
    <td data-label="Status" class="status">${status(app)}</td>
    <td data-label="Instances" class="instances">${app.instances}</td>
    <td data-label="Running" class="running">${app.tasksRunning}</td>
    <td data-label="Healthy" class="healthy">${app.tasksHealthy}</td>
    <td data-label="Deployments" class="deployments">${(app.deployments || []).length}</td>
    <td data-label="Actions" class="actions">
      <label class="inline" for=${scaleId}>Scale to</label>
      <input id=${scaleId} class="scale-input" type="number" min="0" step="1" value=${scaleTo}
             onInput=${(e) => setScaleTo(e.target.value)} />
      <button class="scale" onClick=${scale} disabled=${busy}>Scale</button>
      <button class="restart" onClick=${restart} disabled=${busy}>Restart</button>
      ${confirming
        ? html`<span class="confirm" role="group" aria-label=${`Destroy ${app.id}?`}>Destroy ${app.id}?
            <button class="danger confirm-destroy" onClick=${destroy} disabled=${busy}>Yes, destroy</button>
            <button class="cancel" onClick=${() => setConfirming(false)}>Cancel</button></span>`
        : html`<button class="danger destroy" onClick=${() => setConfirming(true)}>Destroy</button>`}
      <${ErrorNote} error=${error} />
    </td>
  </tr>`;
}

export function ServicesPage() {
  const [creating, setCreating] = useState(() => sessionStorage.getItem("navstar.createOpen") === "1");
  const {data, error, loadedAt} = useLive(() => request("/marathon/v2/apps"));
  const open = (value) => {
    sessionStorage.setItem("navstar.createOpen", value ? "1" : "0");
    setCreating(value);
  };
  const apps = data ? [...data.apps].sort((a, b) => a.id.localeCompare(b.id)) : [];
  return html`<section aria-labelledby="services-title">
    <div class="title-row"><h1 id="services-title">Services</h1>
      <button id="create-open" onClick=${() => open(!creating)} aria-expanded=${creating}>
        ${creating ? "Close form" : "Create service"}</button></div>
    ${creating && html`<${CreateServiceForm} onDone=${() => open(false)} />`}
    <${ErrorNote} error=${error} />
    ${data && html`<p class="meta">${apps.length} services · updated ${loadedAt.toLocaleTimeString()}</p>
    <div class="table-wrap"><table class="services" id="services-table">
      <thead><tr><th>Service</th><th>Status</th><th>Instances</th><th>Running</th><th>Healthy</th>
        <th>Deployments</th><th>Actions</th></tr></thead>
      <tbody>${apps.map((app) => html`<${AppRow} key=${app.id + ":" + app.version} app=${app} />`)}</tbody>
    </table></div>`}
  </section>`;
}

// -- create ------------------------------------------------------------------------------------
const DRAFT_KEY = "navstar.createDraft";
const EMPTY_PORT = {port: "0", name: "", protocol: "tcp", lb: false, vipPort: "80"};
const EMPTY = {id: "", cmd: "", cpus: "0.1", mem: "64", instances: "1", ports: [{...EMPTY_PORT}], extra: "{}"};

function loadDraft() {
  try {
    return {...EMPTY, ...JSON.parse(sessionStorage.getItem(DRAFT_KEY) || "{}")};
  } catch {
    return {...EMPTY};
  }
}

export function buildApp(form) {
  const errors = {};
  const idProblem = checkAppId(form.id);
  if (idProblem) errors.id = idProblem;
  const id = "/" + form.id.trim().replace(/^\//, "");
  for (const [field, rule] of [["cpus", {min: 0, exclusiveMin: true}], ["mem", {min: 0, exclusiveMin: true}],
    ["instances", {min: 0, integer: true}]]) {
    const problem = checkNumber(form[field], rule);
    if (problem) errors[field] = problem;
  }
  const portDefinitions = form.ports.map((port, index) => {
    const problem = checkNumber(port.port, {min: 0, max: 65535, integer: true});
    if (problem) errors[`port-${index}`] = problem;
    const definition = {port: Number(port.port), protocol: port.protocol};
    if (port.name.trim()) definition.name = port.name.trim();
    if (port.lb) {
      const vipProblem = checkNumber(port.vipPort, {min: 1, max: 65535, integer: true});
      if (vipProblem) errors[`vipport-${index}`] = vipProblem;
      definition.labels = {[`VIP_${index}`]: `${id}:${Number(port.vipPort)}`};
    }
    return definition;
  });
  let extra = {};
  try {
    extra = JSON.parse(form.extra || "{}");
    if (typeof extra !== "object" || extra === null || Array.isArray(extra)) {
      errors.extra = "must be a JSON object, e.g. {\"env\": {\"A\": \"1\"}}";
      extra = {};
    }
  } catch (err) {
    errors.extra = `not JSON: ${err.message}`;
  }
  const app = {id, cpus: Number(form.cpus), mem: Number(form.mem), instances: Number(form.instances), portDefinitions};
  if (form.cmd.trim()) app.cmd = form.cmd;
  return {app: {...app, ...extra}, errors};
}

// Marathon's 422 details name JSON paths ("/cpus", "/portDefinitions(0)/port"): each goes next to
// its field, the rest to the form.
const FIELD_OF_PATH = [[/^\/id\b/, "id"], [/^\/cmd\b/, "cmd"], [/^\/cpus\b/, "cpus"], [/^\/mem\b/, "mem"],
  [/^\/instances\b/, "instances"], [/^\/portDefinitions[/(](\d+)\)?\/labels/, "vipport-$1"],
  [/^\/portDefinitions[/(](\d+)/, "port-$1"]];

export function fieldErrorsOf(err) {
  const errors = {};
  const details = err instanceof ApiError && err.body && Array.isArray(err.body.details) ? err.body.details : [];
  for (const detail of details) {
    const path = detail.path || "";
    const message = (detail.errors || []).join("; ") || err.message;
    let field = path === "/" || path === "" ? "whole" : "extra";     // about the app as a whole
    for (const [pattern, name] of FIELD_OF_PATH) {
      const match = pattern.exec(path);
      if (match) {
        field = name.replace("$1", match[1]);
        break;
      }
    }
    errors[field] = errors[field] ? `${errors[field]}; ${path}: ${message}` : (field === "extra" ? `${path}: ${message}` : message);
  }
  if (err instanceof ApiError && err.status === 409 && /exist/i.test(err.message)) errors.id = err.message;
  errors.form = `${err.status ? err.status + ": " : ""}${err.message}${errors.whole ? ": " + errors.whole : ""}`;
  delete errors.whole;
  return errors;
}

function Field({id, label, error, hint, children}) {
  return html`<div class=${"field" + (error ? " invalid" : "")}>
    <label for=${id}>${label}</label>${children}
    ${hint && html`<p class="hint" id=${id + "-hint"}>${hint}</p>`}
    ${error && html`<p class="error" id=${id + "-error"} role="alert">${error}</p>`}
  </div>`;
}

function CreateServiceForm({onDone}) {
  const [form, setForm] = useState(loadDraft);
  const [errors, setErrors] = useState({});
  const [busy, setBusy] = useState(false);
  const update = (changes) => {
    const next = {...form, ...changes};
    sessionStorage.setItem(DRAFT_KEY, JSON.stringify(next));
    setForm(next);
  };
  const updatePort = (index, changes) => update({ports: form.ports.map((p, i) => (i === index ? {...p, ...changes} : p))});
  const {app} = buildApp(form);
  const submit = async (event) => {
    event.preventDefault();
    const built = buildApp(form);
    if (Object.keys(built.errors).length) {
      setErrors({...built.errors, form: "Fix the marked fields; nothing was sent."});
      return;
    }
    setBusy(true);
    setErrors({});
    try {
      await request("/marathon/v2/apps", {method: "POST", json: built.app});
      sessionStorage.removeItem(DRAFT_KEY);
      onDone();
    } catch (err) {
      setErrors(fieldErrorsOf(err));
    } finally {
      setBusy(false);
    }
  };
  const input = (id, field, attrs = {}) => html`<input id=${id} value=${form[field]} ...${attrs}
      aria-invalid=${errors[field] ? "true" : "false"} aria-describedby=${errors[field] ? id + "-error" : undefined}
      onInput=${(e) => update({[field]: e.target.value})} />`;
  return html`<form class="create" id="create-form" onSubmit=${submit} noValidate aria-labelledby="create-title">
    <h2 id="create-title">Create a service</h2>
    <div class="grid">
      <${Field} id="create-id" label="Service id" error=${errors.id} hint="e.g. /nginx or /shop/web">
        ${input("create-id", "id", {placeholder: "/nginx", autocomplete: "off"})}<//>
      <${Field} id="create-instances" label="Instances" error=${errors.instances}>
        ${input("create-instances", "instances", {inputmode: "numeric"})}<//>
      <${Field} id="create-cpus" label="CPUs" error=${errors.cpus}>${input("create-cpus", "cpus", {inputmode: "decimal"})}<//>
      <${Field} id="create-mem" label="Memory (MiB)" error=${errors.mem}>${input("create-mem", "mem", {inputmode: "decimal"})}<//>
    </div>
    <${Field} id="create-cmd" label="Command" error=${errors.cmd} hint="run with $PORT0… set to the ports given">
      <textarea id="create-cmd" rows="2" value=${form.cmd} onInput=${(e) => update({cmd: e.target.value})}></textarea><//>
    <fieldset class="ports"><legend>Ports</legend>
      ${form.ports.map((port, index) => html`<div class="port-row" key=${index}>
        <${Field} id=${`create-port-${index}`} label=${`Port ${index} (0: any free)`} error=${errors[`port-${index}`]}>
          <input id=${`create-port-${index}`} value=${port.port} inputmode="numeric"
                 aria-invalid=${errors[`port-${index}`] ? "true" : "false"}
                 onInput=${(e) => updatePort(index, {port: e.target.value})} /><//>
        <${Field} id=${`create-portname-${index}`} label="Name">
          <input id=${`create-portname-${index}`} value=${port.name} onInput=${(e) => updatePort(index, {name: e.target.value})} /><//>
        <${Field} id=${`create-protocol-${index}`} label="Protocol">
          <select id=${`create-protocol-${index}`} onChange=${(e) => updatePort(index, {protocol: e.target.value})}>
            ${["tcp", "udp", "udp,tcp"].map((p) => html`<option value=${p} selected=${port.protocol === p}>${p}</option>`)}
          </select><//>
        <div class="field check"><input type="checkbox" id=${`create-lb-${index}`} checked=${port.lb}
               onChange=${(e) => updatePort(index, {lb: e.target.checked})} />
          <label for=${`create-lb-${index}`}>Load Balanced</label></div>
        ${port.lb && html`<${Field} id=${`create-vipport-${index}`} label="VIP port" error=${errors[`vipport-${index}`]}>
          <input id=${`create-vipport-${index}`} value=${port.vipPort} inputmode="numeric"
                 onInput=${(e) => updatePort(index, {vipPort: e.target.value})} /><//>
          <p class="vip-preview" id=${`create-vipname-${index}`} aria-live="polite">
            ${form.id.trim() ? vipName(app.id, port.vipPort) : "name the service to see its VIP"}</p>`}
        ${form.ports.length > 1 && html`<button type="button" class="link"
             onClick=${() => update({ports: form.ports.filter((_, i) => i !== index)})}>Remove port ${index}</button>`}
      </div>`)}
      <button type="button" id="create-add-port" onClick=${() => update({ports: [...form.ports, {...EMPTY_PORT}]})}>Add a port</button>
    </fieldset>
    <${Field} id="create-extra" label="More fields (JSON object merged into the app)" error=${errors.extra}
              hint='e.g. {"env": {"A": "1"}, "healthChecks": [...]}'>
      <textarea id="create-extra" class="json" rows="4" spellcheck="false" value=${form.extra}
                onInput=${(e) => update({extra: e.target.value})}></textarea><//>
    <details><summary>App JSON to be sent</summary><pre id="create-preview">${JSON.stringify(app, null, 2)}</pre></details>
    ${errors.form && html`<p class="error" role="alert" id="create-form-error">${errors.form}</p>`}
    <div class="buttons"><button type="submit" id="create-submit" disabled=${busy}>Create</button>
      <button type="button" onClick=${() => { sessionStorage.removeItem(DRAFT_KEY); setForm({...EMPTY}); setErrors({}); }}>Clear</button></div>
  </form>`;
}

// -- detail ------------------------------------------------------------------------------------
async function connectionCounts() {
  // Connection counts live in each agent's load balancer; the lab's Prometheus (navstar lab up
  // --prometheus) scrapes them. Without it the page says so instead of showing numbers.
  try {
    const query = encodeURIComponent("sum by (vip, backend) (navstar_minuteman_connections_total)");
    const answer = await request(`/prometheus/api/v1/query?query=${query}`);
    const counts = {};
    for (const row of answer.data.result) counts[`${row.metric.vip} ${row.metric.backend}`] = Number(row.value[1]);
    return counts;
  } catch {
    return null;
  }
}

async function loadDetail(appId) {
  const path = enc(appId);
  const [app, tasks, view, vips, counts] = await Promise.all([
    request(`/marathon/v2/apps/${path}`), request(`/marathon/v2/apps/${path}/tasks`),
    request("/mesos/v1/view"), request("/net/v1/vips"), connectionCounts()]);
  const hosts = {};
  (view.agents || []).forEach((agent) => { hosts[agent.agent_id] = `${agent.hostname} (${agent.ip})`; });
  const mesosName = appId.replace(/^\//, "").split("/").reverse().join("-");
  const dns = await request(`/mesos_dns/v1/hosts/${encodeURIComponent(mesosName + ".marathon.mesos")}`).catch(() => []);
  return {app: app.app, tasks: tasks.tasks, hosts, vips: vips.filter((v) => (v.apps || []).includes(appId)),
    counts, mesosName, dns: dns.filter((r) => r.ip)};
}

export function ServiceDetailPage({appId}) {
  const {data, error} = useLive(() => loadDetail(appId), [appId]);
  const [, tick] = useState(0);
  useEffect(() => {
    const timer = setInterval(() => tick((n) => n + 1), 5000);   // ages and the event list move on
    return () => clearInterval(timer);
  }, []);
  if (!data) return html`<section><h1>${appId}</h1>${error ? html`<${ErrorNote} error=${error} />` : html`<p>Loading…</p>`}</section>`;
  const {app, tasks, hosts, vips, counts, mesosName, dns} = data;
  const events = recentEvents.filter((e) => e.data && (e.data.appId === appId ||
    (e.data.plan && JSON.stringify(e.data.plan).includes(`"${appId}"`)))).slice(-30).reverse();
  return html`<section aria-labelledby="detail-title" class="detail">
    <p><a href="#/services">← Services</a></p>
    <h1 id="detail-title">${app.id}</h1>
    <p class="meta">${`${status(app)} · ${app.tasksRunning}/${app.instances} running · ${app.tasksHealthy} healthy · ` +
      `${(app.deployments || []).length} deployments · cpus ${app.cpus} · mem ${app.mem} MiB`}</p>
    <h2>Tasks</h2>
    <div class="table-wrap"><table id="tasks-table"><thead><tr><th>Task</th><th>State</th><th>Agent</th>
      <th>Addresses</th><th>Ports</th><th>Health</th><th>Age</th></tr></thead><tbody>
      ${tasks.map((t) => html`<tr>
        <td data-label="Task" class="mono">${t.id}</td><td data-label="State">${t.state}</td>
        <td data-label="Agent">${hosts[t.slaveId] || t.host}</td>
        <td data-label="Addresses">${[t.host, ...(t.ipAddresses || []).map((a) => a.ipAddress)].filter((v, i, all) => all.indexOf(v) === i).join(", ")}</td>
        <td data-label="Ports">${(t.ports || []).join(", ")}</td>
        <td data-label="Health">${(t.healthCheckResults || []).length ? (t.healthCheckResults.every((r) => r.alive) ? "healthy" : "unhealthy") : "no checks"}</td>
        <td data-label="Age">${age(t.startedAt || t.stagedAt)}</td></tr>`)}
    </tbody></table></div>
    <h2>Load-balanced addresses (VIPs)</h2>
    ${vips.length ? html`<div class="table-wrap"><table id="vips-table"><thead><tr><th>Name</th><th>Address</th>
        <th>Backends (state, connections)</th></tr></thead><tbody>
      ${vips.map((v) => html`<tr><td data-label="Name" class="vip-name">${v.vip}</td>
        <td data-label="Address">${v.address}:${v.port}/${v.protocol}</td>
        <td data-label="Backends">${v.backend.map((b) => html`<div class="backend">${b.ip}:${b.port}
          <span class=${"state " + b.state}>${b.state}</span>
          ${counts ? ` ${counts[`${v.vip} ${b.ip}:${b.port}`] ?? 0} conns` : ""}</div>`)}</td></tr>`)}
      </tbody></table></div>
      ${counts === null && html`<p class="hint">Connection counts come from the lab's Prometheus (navstar lab up --prometheus); it does not answer.</p>`}`
      : html`<p>No VIPs: tick "Load Balanced" on a port to get one.</p>`}
    <h2>DNS names</h2>
    <ul class="dns" id="dns-names">
      <li><code>${mesosName}.marathon.mesos</code> → ${dns.map((r) => r.ip).join(", ") || "no address yet"}</li>
      <li><code>_${mesosName}._tcp.marathon.mesos</code> (SRV, the tasks' ports)</li>
      ${vips.map((v) => html`<li><code>${v.vip}</code> → ${v.address}:${v.port}</li>`)}
    </ul>
    <h2>Events</h2>
    ${events.length ? html`<ol class="events" reversed>${events.map((e) => html`<li><time>${e.at.toLocaleTimeString()}</time>
      ${e.type}${e.data.taskStatus ? ` ${e.data.taskStatus}` : ""}${e.data.taskId ? ` (${e.data.taskId})` : ""}</li>`)}</ol>`
      : html`<p class="hint">No events for this service since the page opened.</p>`}
  </section>`;
}
