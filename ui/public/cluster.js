// Nodes (Mesos' agents with their resources and the cluster view's overlay subnets) and Network
// (the VIP table, overlay subnets per agent, a DNS lookup box).
import {useState} from "preact/hooks";
import {html} from "./html.js";
import {request} from "./api.js";
import {useLive} from "./live.js";

const PUBLIC_ROLE = "slave_public";
const RUNNING = new Set(["TASK_RUNNING", "TASK_STAGING", "TASK_STARTING", "TASK_KILLING"]);

function used(state) {
  // What the live tasks hold, per agent (Mesos' state lists each task's resources).
  const totals = {};
  for (const framework of state.frameworks || []) {
    for (const task of framework.tasks || []) {
      if (!RUNNING.has(task.state)) continue;
      const sum = totals[task.slave_id] || (totals[task.slave_id] = {cpus: 0, mem: 0, disk: 0, tasks: 0});
      sum.cpus += task.resources?.cpus || 0;
      sum.mem += task.resources?.mem || 0;
      sum.disk += task.resources?.disk || 0;
      sum.tasks += 1;
    }
  }
  return totals;
}

async function loadNodes() {
  const [state, view] = await Promise.all([request("/mesos/master/state"), request("/mesos/v1/view")]);
  const agents = {};
  (view.agents || []).forEach((agent) => { agents[agent.agent_id] = agent; });
  const usage = used(state);
  return (state.slaves || []).map((slave) => ({
    id: slave.id, hostname: slave.hostname, address: slave.pid.split("@").pop(),
    public: PUBLIC_ROLE in (slave.reserved_resources || {}) || slave.attributes?.public_ip === "true",
    reachable: slave.active, resources: slave.resources,
    used: usage[slave.id] || {cpus: 0, mem: 0, disk: 0, tasks: 0},
    overlay: agents[slave.id]?.overlay || null, networks: agents[slave.id]?.networks || null,
  })).sort((a, b) => (a.public - b.public) || a.hostname.localeCompare(b.hostname));
}

const round = (n) => Math.round(n * 100) / 100;

function Resource({label, total, usedAmount}) {
  const free = round((total || 0) - usedAmount);
  const share = total ? Math.min(100, Math.round((usedAmount / total) * 100)) : 0;
  return html`<div class="resource"><span>${label} ${round(usedAmount)} used / ${free} free</span>
    <meter min="0" max="100" value=${share} aria-label=${`${label} used: ${share}%`}></meter></div>`;
}

function NodeTable({nodes, title, id}) {
  return html`<h2>${title} (${nodes.length})</h2>
    <div class="table-wrap"><table id=${id}><thead><tr><th>Agent</th><th>Address</th><th>State</th>
      <th>Resources</th><th>Tasks</th><th>Overlay subnet</th></tr></thead><tbody>
    ${nodes.map((node) => html`<tr data-agent-id=${node.id}>
      <td data-label="Agent">${node.hostname}<div class="mono small">${node.id}</div></td>
      <td data-label="Address">${node.address}</td>
      <td data-label="State"><span class=${"state " + (node.reachable ? "up" : "unreachable")}>
        ${node.reachable ? "reachable" : "unreachable"}</span></td>
      <td data-label="Resources">
        <${Resource} label="cpus" total=${node.resources.cpus} usedAmount=${node.used.cpus} />
        <${Resource} label="mem MiB" total=${node.resources.mem} usedAmount=${node.used.mem} />
        <${Resource} label="disk MiB" total=${node.resources.disk} usedAmount=${node.used.disk} />
        <div class="small">ports ${node.resources.ports || "none"}</div></td>
      <td data-label="Tasks">${node.used.tasks}</td>
      <td data-label="Overlay" class="overlay-subnet">${node.overlay ? node.overlay.subnet : "none"}</td>
    </tr>`)}</tbody></table></div>`;
}

export function NodesPage() {
  const {data, error} = useLive(loadNodes);
  return html`<section aria-labelledby="nodes-title"><h1 id="nodes-title">Nodes</h1>
    ${error && html`<p class="error" role="alert">${error.message}</p>`}
    ${data ? html`<${NodeTable} id="private-agents" title="Private agents" nodes=${data.filter((n) => !n.public)} />
      <${NodeTable} id="public-agents" title="Public agents" nodes=${data.filter((n) => n.public)} />`
      : !error && html`<p>Loading…</p>`}
  </section>`;
}

// -- network -----------------------------------------------------------------------------------
async function loadNetwork() {
  const [vips, view] = await Promise.all([request("/net/v1/vips"), request("/mesos/v1/view")]);
  return {vips, agents: view.agents || [], overlay: view.overlay};
}

const NAME = /^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$/;

function DnsLookup({vips}) {
  const [name, setName] = useState(sessionStorage.getItem("navstar.dnsName") || "");
  const [answer, setAnswer] = useState(null);
  const [error, setError] = useState(null);
  const lookup = async (event) => {
    event.preventDefault();
    const asked = name.trim().replace(/\.$/, "");
    setAnswer(null);
    if (!NAME.test(asked)) {
      setError("a DNS name: labels of letters, digits, '-' and '_' separated by dots");
      return;
    }
    setError(null);
    try {
      const records = [];
      if (asked.startsWith("_")) {
        const srv = await request(`/mesos_dns/v1/services/${encodeURIComponent(asked)}`);
        srv.filter((r) => r.host).forEach((r) => records.push(`SRV ${r.host}:${r.port} (${r.ip})`));
      } else {
        const hosts = await request(`/mesos_dns/v1/hosts/${encodeURIComponent(asked)}`);
        hosts.filter((r) => r.ip).forEach((r) => records.push(`A ${r.ip}`));
      }
      // Names under l4lb.thisdcos.directory are the VIPs' (spartan answers them from this table).
      vips.filter((v) => v.name === asked).forEach((v) => records.push(`A ${v.address} (VIP, port ${v.port}/${v.protocol})`));
      setAnswer({name: asked, records});
    } catch (err) {
      setError(err.message);
    }
  };
  return html`<form class="dns-lookup" onSubmit=${lookup} aria-labelledby="dns-title">
    <h2 id="dns-title">DNS lookup</h2>
    <div class="inline-form"><label for="dns-name">Name</label>
      <input id="dns-name" value=${name} placeholder="web.marathon.mesos" aria-describedby="dns-error"
             onInput=${(e) => { setName(e.target.value); sessionStorage.setItem("navstar.dnsName", e.target.value); }} />
      <button type="submit" id="dns-submit">Look up</button></div>
    ${error && html`<p class="error" role="alert" id="dns-error">${error}</p>`}
    ${answer && html`<div id="dns-answer"><p><code>${answer.name}</code>:</p>
      ${answer.records.length ? html`<ul>${answer.records.map((r) => html`<li>${r}</li>`)}</ul>` : html`<p>NXDOMAIN (no records)</p>`}</div>`}
  </form>`;
}

export function NetworkPage() {
  const {data, error} = useLive(loadNetwork);
  if (!data) return html`<section><h1>Network</h1>${error ? html`<p class="error" role="alert">${error.message}</p>` : html`<p>Loading…</p>`}</section>`;
  return html`<section aria-labelledby="network-title"><h1 id="network-title">Network</h1>
    ${error && html`<p class="error" role="alert">${error.message}</p>`}
    <h2>VIPs (${data.vips.length})</h2>
    <div class="table-wrap"><table id="network-vips"><thead><tr><th>VIP</th><th>Address</th><th>Apps</th>
      <th>Backends</th></tr></thead><tbody>
      ${data.vips.map((v) => html`<tr><td data-label="VIP" class="vip-name">${v.vip}</td>
        <td data-label="Address">${v.address}:${v.port}/${v.protocol}</td>
        <td data-label="Apps">${v.apps.map((a) => html`<a href=${"#/services" + a}>${a}</a> `)}</td>
        <td data-label="Backends">${v.backend.map((b) => html`<div>${b.ip}:${b.port} <span class=${"state " + b.state}>${b.state}</span></div>`)}</td>
      </tr>`)}</tbody></table></div>
    <h2>Overlay ${data.overlay ? html`<code>${data.overlay.name}</code> ${data.overlay.subnet}` : ""}</h2>
    <div class="table-wrap"><table id="overlay-table"><thead><tr><th>Agent</th><th>Subnet</th><th>Mesos containers</th>
      <th>Docker containers</th><th>VTEP</th><th>State</th></tr></thead><tbody>
      ${data.agents.map((a) => html`<tr><td data-label="Agent">${a.hostname} (${a.ip})</td>
        <td data-label="Subnet">${a.overlay?.subnet || "none"}</td><td data-label="Mesos">${a.overlay?.m_dcos || ""}</td>
        <td data-label="Docker">${a.overlay?.d_dcos || ""}</td><td data-label="VTEP">${a.overlay?.vtep_ip || ""}</td>
        <td data-label="State">${a.reachable ? "reachable" : "unreachable"}</td></tr>`)}
    </tbody></table></div>
    <${DnsLookup} vips=${data.vips} />
  </section>`;
}
