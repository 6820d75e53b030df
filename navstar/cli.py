"""The ``navstar`` command: node processes (``master``, ``agent``) and the lab."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from adminrouter.cli import use_lab_front_door, user_cli
from batch.cli import job_cli, use_lab_front_door_for_jobs
from control.cli import app_cli, node_cli, task_cli, use_lab_master
from cosmos.cli import package_cli
from marathon_lb.cli import marathon_lb, marathon_lb_autoscale
from minuteman.cli import vip_app
from spartan_dns.cli import dns_app
from universe.cli import universe_cli

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="navstar: DC/OS networking (VIPs, overlay, DNS) and a compact Mesos/Marathon.")
lab_app = typer.Typer(no_args_is_help=True, help="A sealed multi-node lab in network namespaces.")
app.add_typer(lab_app, name="lab")

app.add_typer(dns_app, name="dns")
app.add_typer(vip_app, name="vip")
app.add_typer(app_cli, name="app")
app.add_typer(task_cli, name="task")
app.add_typer(job_cli, name="job")
app.add_typer(node_cli, name="node")
app.add_typer(user_cli, name="user")
app.add_typer(package_cli, name="package")
app.add_typer(universe_cli, name="universe")
app.command("marathon-lb")(marathon_lb)
app.command("marathon-lb-autoscale")(marathon_lb_autoscale)


def _lab_master(lab: str) -> tuple[str, str | None, str] | None:
    """The lab's Marathon and Mesos APIs through Admin Router, and a login token (logged in as
    the lab's ``admin`` by itself)."""
    from navstar.frontdoor import lab_token
    from navstar.lab import LabState

    state = LabState.load(lab)
    return None if state is None else (state.master_url, lab_token(state), state.mesos_url)


def _lab_front_door(lab: str) -> tuple[str, dict[str, str]] | None:
    from navstar.frontdoor import lab_token
    from navstar.lab import LabState

    state = LabState.load(lab)
    if state is None:
        return None
    token = lab_token(state)
    return state.front_door, ({"Authorization": f"token={token}"} if token else {})


use_lab_master(_lab_master)
use_lab_front_door(_lab_front_door)
use_lab_front_door_for_jobs(_lab_front_door)

console = Console()
err = Console(stderr=True)

LabName = Annotated[str, typer.Option("--name", help="lab name")]


def _lab(name: str, progress=None):
    """The lab called ``name``; a bad name is a usage error (exit 2) naming the rule."""
    from navstar.lab import Lab, LabError

    try:
        return Lab(name, progress=progress)
    except LabError as exc:
        err.print(f"--name: {exc}")
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _node_errors(what: str) -> Iterator[None]:
    """An unknown node is a usage error (exit 2, naming the nodes); other lab trouble exits 1."""
    from navstar.lab import LabError, UnknownNode

    try:
        yield
    except UnknownNode as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None
    except LabError as exc:
        err.print(f"[red]{what} failed:[/] {exc}")
        raise typer.Exit(1) from None


def _need_root() -> None:
    if os.geteuid() != 0:
        err.print("[red]root is needed[/] (network namespaces, cgroups, BPF): run with sudo")
        raise typer.Exit(1)


@app.command()
def master(
    marathon_listen: Annotated[str, typer.Option(help="Marathon API [host]:port")] = ":8080",
    mesos_listen: Annotated[str, typer.Option(help="Mesos API [host]:port")] = ":5050",
    state_dir: Annotated[str | None, typer.Option(help="where the master keeps its state")] = None,
    token_file: Annotated[str | None, typer.Option(help="cluster secret; API calls must carry it")] = None,
    agent_timeout: Annotated[float, typer.Option(help="seconds without a heartbeat before an agent is unreachable")] = 75.0,
    image_map: Annotated[str | None, typer.Option(help="JSON image map shared with the agents (apps without a command)")] = None,
    overlay_subnet: Annotated[str, typer.Option(help="the dcos overlay network")] = "9.0.0.0/8",
    overlay_prefixlen: Annotated[int, typer.Option(help="prefix length of each agent's overlay subnet")] = 24,
    vtep_subnet: Annotated[str, typer.Option(help="where VTEP addresses come from")] = "44.128.0.0/20",
    vni: Annotated[int, typer.Option(help="VXLAN network identifier")] = 1024,
    vxlan_port: Annotated[int, typer.Option(help="VXLAN UDP port")] = 64000,
    overlay_mtu: Annotated[int, typer.Option(help="container MTU on the overlay")] = 1420,
    adminrouter_listen: Annotated[str, typer.Option(help="Admin Router's backend (login, validator, Mesos-DNS API): [host]:port, for nginx")] = "127.0.0.1:8101",
    token_expiry: Annotated[float, typer.Option(help="seconds a login token stays valid")] = 5 * 24 * 3600.0,
    zk: Annotated[str | None, typer.Option(help="several masters: zk://host:2181[,host:2181…]/mesos (leader election and state in ZooKeeper; without it: one master, SQLite)")] = None,
    ip: Annotated[str | None, typer.Option(help="with --zk: the address this master advertises (MasterInfo, leader.mesos)")] = None,
    zk_session_timeout: Annotated[float, typer.Option(help="with --zk: ZooKeeper session timeout in seconds (how long a silent leader keeps leading)")] = 10.0,
) -> None:
    """Run the master (Marathon API, Mesos API, allocator, Admin Router's backend)."""
    from pydantic import ValidationError

    from cluster.view import OverlayConfig
    from navstar.master_main import run_master

    try:
        overlay = OverlayConfig(subnet=overlay_subnet, agent_prefixlen=overlay_prefixlen, vtep_subnet=vtep_subnet,
                                vni=vni, port=vxlan_port, mtu=overlay_mtu)
        from cluster.ipam import OverlayIpam

        OverlayIpam(overlay)   # checks the ranges and prefix lengths fit together
    except (ValidationError, ValueError) as exc:
        err.print(f"overlay settings: {exc}")
        raise typer.Exit(2) from None
    if token_expiry <= 0:
        err.print(f"--token-expiry: must be positive, got {token_expiry:g}")
        raise typer.Exit(2)
    if zk is not None:
        from control.zk import ZkUrl, ZkUrlError

        try:
            ZkUrl.parse(zk)
        except ZkUrlError as exc:
            err.print(f"--zk: {exc}")
            raise typer.Exit(2) from None
        if ip is None:
            err.print("--zk needs --ip (the address this master advertises)")
            raise typer.Exit(2)
    run_master(marathon_listen, mesos_listen, state_dir, token_file, agent_timeout, image_map, overlay,
               adminrouter_listen, token_expiry, zk=zk, ip=ip, zk_session_timeout=zk_session_timeout)


@app.command()
def adminrouter(
    listen: Annotated[str, typer.Option(help="where nginx listens: ip:port (the master's address, :80)")] = "0.0.0.0:80",
    master: Annotated[str, typer.Option(help="the master's Mesos API (routes follow its cluster view), or zk://host:2181[,…]/mesos: upstreams follow the elected leader")] = "http://127.0.0.1:5050",
    token_file: Annotated[str | None, typer.Option(help="cluster secret (upstream credential)")] = None,
    run_dir: Annotated[str, typer.Option(help="nginx's configuration, pid, logs and caches")] = "/run/navstar/adminrouter",
    backend: Annotated[str, typer.Option(help="the master's Admin Router backend (login, validator)")] = "127.0.0.1:8101",
    marathon: Annotated[str, typer.Option(help="the Marathon API upstream")] = "127.0.0.1:8080",
    mesos: Annotated[str, typer.Option(help="the Mesos API upstream")] = "127.0.0.1:5050",
    metrics_listen: Annotated[str, typer.Option(help="Prometheus metrics of the supervisor")] = "127.0.0.1:61092",
    nginx: Annotated[str, typer.Option(help="the nginx binary")] = "nginx",
) -> None:
    """Run Admin Router: nginx in front of the master, its routes kept current from the cluster view."""
    from navstar.adminrouter_main import run_adminrouter

    run_adminrouter(listen, master, token_file, run_dir, backend, marathon, mesos, metrics_listen, nginx)


@app.command()
def cosmos(
    listen: Annotated[str, typer.Option(help="Cosmos' API, for Admin Router's /package/ and /capabilities")] = "127.0.0.1:7070",
    universe_listen: Annotated[str, typer.Option(help="where the local Universe is served (/repo)")] = "127.0.0.1:8082",
    marathon: Annotated[str, typer.Option(help="the Marathon API packages are installed through")] = "http://127.0.0.1:8080",
    token_file: Annotated[str | None, typer.Option(help="cluster secret (Marathon's credential)")] = None,
    state_dir: Annotated[str | None, typer.Option(help="where the repository list is kept (default: memory)")] = None,
    universe: Annotated[str | None, typer.Option(help="the local Universe's packages folder (default: the shipped one)")] = None,
) -> None:
    """Run Cosmos (the package service) and the local Universe server."""
    from navstar.cosmos_main import run_cosmos
    from universe.repository import UniverseError

    try:
        run_cosmos(listen, universe_listen, marathon, token_file, state_dir, universe)
    except (UniverseError, ValueError) as exc:
        err.print(f"[red]cosmos not started:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def agent(
    master: Annotated[str, typer.Option(help="the master's Mesos API URL, or zk://host:2181[,…]/mesos to follow the elected leader (several masters)")] = "http://127.0.0.1:5050",
    ip: Annotated[str, typer.Option(help="this node's underlay IP")] = "127.0.0.1",
    agent_id: Annotated[str | None, typer.Option(help="stable identity (default: hostname)")] = None,
    token_file: Annotated[str | None, typer.Option(help="cluster secret file")] = None,
    api_listen: Annotated[str, typer.Option(help="local REST API")] = "127.0.0.1:62080",
    agent_listen: Annotated[str, typer.Option(help="agent API the master calls")] = ":5051",
    metrics_listen: Annotated[str | None, typer.Option(help="Prometheus metrics (default <ip>:61091)")] = None,
    work_dir: Annotated[str, typer.Option(help="sandboxes and local state")] = "/var/lib/navstar/agent",
    lb: Annotated[str, typer.Option(help="VIP dataplane: ebpf, nfqueue or auto")] = "auto",
    lb_balancing: Annotated[str, typer.Option(help="backend choice: maglev (consistent hashing) or p2c (least connections)")] = "maglev",
    lb_reply_timeout: Annotated[float, typer.Option(help="seconds without a reply that fail a VIP connection attempt (the eBPF socket LB sees the first SYN retransmit, at 1 s)")] = 0.4,
    lb_failures: Annotated[int, typer.Option(help="failed attempts in a row that take a backend out")] = 5,
    lb_quarantine: Annotated[float, typer.Option(help="seconds a failing backend stays out")] = 30.0,
    lb_probe_interval: Annotated[float | None, typer.Option(help="also probe every backend every N seconds (default: passive only)")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPUs to offer (default: all)")] = None,
    mem: Annotated[float | None, typer.Option(help="MiB to offer (default: all)")] = None,
    ports: Annotated[str, typer.Option(help="host-port ranges to offer: BEGIN-END[,BEGIN-END…]")] = "31000-32000",
    default_role: Annotated[str, typer.Option(help="role this agent's resources are reserved for (Mesos --default_role; DC/OS public agents: slave_public)")] = "*",
    attributes: Annotated[str, typer.Option(help="Mesos attributes, KEY:VALUE[;KEY:VALUE…] (public agents: public_ip:true)")] = "",
    heartbeat_interval: Annotated[float, typer.Option(help="seconds between heartbeats")] = 5.0,
    cgroup: Annotated[str, typer.Option(help="this node's cgroup (v2 path below the root): BPF scope, task parent")] = "navstar",
    netns_prefix: Annotated[str, typer.Option(help="prefix of task network namespaces")] = "navstar-task-",
    node_netns: Annotated[str | None, typer.Option(help="this node's named network namespace (lab)")] = None,
    bpf_pin_dir: Annotated[str, typer.Option(help="where BPF maps are pinned")] = "/sys/fs/bpf/navstar/agent",
    image_map: Annotated[str | None, typer.Option(help="JSON image map for apps without a command")] = None,
    task_user: Annotated[str, typer.Option(help="user tasks run as ('' = the agent's)")] = "nobody",
    overlay_interval: Annotated[float, typer.Option(help="seconds between overlay drift-repair passes")] = 30.0,
    upstream: Annotated[list[str] | None, typer.Option(help="upstream resolver ip[:port] (repeat; default: the host's)")] = None,
    forward_zone: Annotated[list[str] | None, typer.Option(help="per-zone upstreams: zone=ip[,ip] (repeat)")] = None,
    resolv_conf: Annotated[str, typer.Option(help="where to find upstream resolvers when --upstream is not given")] = "/etc/resolv.conf",
    manage_resolv_conf: Annotated[bool, typer.Option("--manage-resolv-conf", help="a real host: point --resolv-conf at this node's resolver (the host's file kept beside it, its nameservers the upstreams), restored on stop")] = False,
    lb_cgroup: Annotated[str | None, typer.Option(help="v2 cgroup the eBPF socket LB serves (a real host: '/', every process; default: --cgroup)")] = None,
    container_networks: Annotated[str, typer.Option(help="how tasks join container networks: cni (plugin chains) or netlink (the overlay's own veths, dcos only)")] = "cni",
    cni_config_dir: Annotated[str, typer.Option(help="CNI network configurations (the agent writes dcos and dcos-docker here)")] = "/etc/navstar/cni",
    cni_plugin_dir: Annotated[list[str] | None, typer.Option(help="where CNI plugins are (repeat; default /usr/lib/cni)")] = None,
    cni_timeout: Annotated[float, typer.Option(help="seconds a CNI plugin may take before its task fails")] = 10.0,
    dns_kernel_replay: Annotated[str, typer.Option(help="on, off or auto: answers the resolver has given (own zones, cache) repeated by a tc BPF program on lo, before the process")] = "auto",
) -> None:
    """Run the node agent (executor, overlay, load balancer, DNS)."""
    from navstar.agent_main import AgentOptions, run_agent

    if lb not in ("ebpf", "nfqueue", "auto"):
        err.print(f"--lb: expected ebpf, nfqueue or auto, got {lb!r}")
        raise typer.Exit(2)
    if lb_balancing not in ("maglev", "p2c"):
        err.print(f"--lb-balancing: expected maglev or p2c, got {lb_balancing!r}")
        raise typer.Exit(2)
    health = _health_config(lb_reply_timeout, lb_failures, lb_quarantine, lb_probe_interval)
    from control.roles import role_problem
    from navstar.agent_main import parse_attributes, parse_port_ranges

    for option, value, parse in (("--ports", ports, parse_port_ranges), ("--attributes", attributes,
                                                                        parse_attributes)):
        try:
            parse(value)
        except ValueError as exc:
            err.print(f"{option}: {exc}")
            raise typer.Exit(2) from None
    if dns_kernel_replay not in ("on", "off", "auto"):
        err.print(f"--dns-kernel-replay: expected on, off or auto, got {dns_kernel_replay!r}")
        raise typer.Exit(2)
    if container_networks not in ("cni", "netlink"):
        err.print(f"--container-networks: expected cni or netlink, got {container_networks!r}")
        raise typer.Exit(2)
    if cni_timeout <= 0:
        err.print(f"--cni-timeout: {cni_timeout} must be positive")
        raise typer.Exit(2)
    problem = role_problem(default_role)
    if problem:
        err.print(f"--default-role: {problem}")
        raise typer.Exit(2)
    run_agent(AgentOptions(
        master=master, ip=ip, agent_id=agent_id or "", token_file=token_file, api_listen=api_listen,
        agent_listen=agent_listen, metrics_listen=metrics_listen, work_dir=work_dir, lb=lb,
        balancing=lb_balancing, health=health, cpus=cpus,
        mem=mem, ports=ports, heartbeat_interval=heartbeat_interval, cgroup=cgroup,
        netns_prefix=netns_prefix, node_netns=node_netns, bpf_pin_dir=bpf_pin_dir, image_map=image_map, task_user=task_user or None,
        overlay_interval=overlay_interval, upstreams=upstream or None,
        forward_zones=_forward_zones(forward_zone or []), resolv_conf=resolv_conf,
        manage_resolv_conf=manage_resolv_conf, lb_cgroup=lb_cgroup,
        role=default_role, attributes=parse_attributes(attributes),
        container_networks=container_networks, cni_config_dir=cni_config_dir,
        cni_plugin_dirs=tuple(cni_plugin_dir or ["/usr/lib/cni"]), cni_timeout=cni_timeout,
        dns_kernel_replay=dns_kernel_replay,
    ))


def _health_config(reply_timeout: float, failures: int, quarantine: float, probe_interval: float | None):
    from minuteman.health import HealthConfig

    try:
        return HealthConfig(reply_timeout=reply_timeout, failures=failures, quarantine=quarantine,
                            probe_interval=probe_interval)
    except ValueError as exc:       # names the field: "failures must be >= 1, got 0"
        err.print(f"--lb-{str(exc).split()[0].replace('_', '-')}: {exc}")
        raise typer.Exit(2) from None


def _forward_zones(specs: list[str]) -> dict[str, list[str]]:
    zones: dict[str, list[str]] = {}
    for spec in specs:
        zone, _, servers = spec.partition("=")
        if not zone or not servers:
            err.print(f"--forward-zone: expected zone=ip[,ip], got {spec!r}")
            raise typer.Exit(2)
        zones[zone] = [s for s in servers.split(",") if s]
    return zones


# -- lab ----------------------------------------------------------------------------------
@lab_app.command("up")
def lab_up(
    name: LabName = "lab",
    agents: Annotated[int, typer.Option(help="number of agents")] = 2,
    public_agents: Annotated[int, typer.Option(help="number of public agents (role slave_public, attribute public_ip:true, at .31, .32, …; reachable from outside on :80, :443, :9090, 10000-10100)")] = 0,
    underlay: Annotated[str, typer.Option(help="underlay subnet (/24 or larger)")] = "198.18.0.0/24",
    lb: Annotated[str, typer.Option(help="VIP dataplane: ebpf, nfqueue or auto")] = "auto",
    overlay_interval: Annotated[float, typer.Option(help="agents' overlay drift-repair period (s)")] = 30.0,
    prometheus: Annotated[bool, typer.Option("--prometheus", help="also run Prometheus in the master's namespace (:9090), with the rules in deploy/prometheus")] = False,
    masters: Annotated[int, typer.Option(help="1 (SQLite, no ZooKeeper), 3 or 5 (master-k at .(1+k), a ZooKeeper ensemble, leader election)")] = 1,
) -> None:
    """Build the lab and start a master and the agents in it."""
    _need_root()
    from navstar.lab import LabAlreadyUp, LabError

    with console.status("building the lab") as spinner:
        lab = _lab(name, progress=lambda msg: spinner.update(msg))
        try:
            state = lab.up(agents=agents, underlay=underlay, lb=lb, overlay_interval=overlay_interval,
                           prometheus=prometheus, public_agents=public_agents, masters=masters)
        except LabAlreadyUp as exc:
            console.print(str(exc))
            raise typer.Exit(0) from None
        except LabError as exc:
            err.print(f"[red]lab up failed:[/] {exc}")
            raise typer.Exit(1) from None
    table = _table(f"lab {name!r} is up — Admin Router {state.front_door}", "node", "namespace", "underlay IP",
                   "pid", "log")
    for node in state.nodes:
        table.add_row(node.name, node.namespace, node.ip, str(node.pid), node.log)
    console.print(table)
    from navstar.frontdoor import ADMIN, password_file

    console.print(f"Admin Router: {state.front_door}/ — user [bold]{ADMIN}[/], password in {password_file(state)}\n"
                  f"  navstar app list --lab {name}            (logs in by itself)\n"
                  f"  .venv-dcos/bin/dcos cluster setup {state.front_door} --username {ADMIN} "
                  f"--password \"$(cat {password_file(state)})\"\n"
                  f"  curl -s -X POST {state.front_door}/acs/api/v1/auth/login -H 'Content-Type: application/json' "
                  f"-d '{{\"uid\":\"{ADMIN}\",\"password\":\"...\"}}'")
    if state.prometheus_pid:
        console.print(f"prometheus (pid {state.prometheus_pid}) in the master's namespace: "
                      f"navstar lab exec --name {name} master -- curl -s 'http://127.0.0.1:9090/api/v1/alerts'")


@lab_app.command("status")
def lab_status(name: LabName = "lab", as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the lab's nodes and whether their processes are up."""

    status = _lab(name).status()
    if as_json:
        print(json.dumps(status))
        return
    if not status["nodes"]:
        console.print(f"lab {name!r} is not up")
        return
    table = _table(f"lab {name!r}", "node", "namespace", "ip", "pid", "up")
    for node in status["nodes"]:
        table.add_row(node["name"], node["namespace"], node["ip"], str(node["pid"]),
                      "[green]up[/]" if node["up"] else "[red]down[/]")
    console.print(table)


@lab_app.command("exec", context_settings={"ignore_unknown_options": True})
def lab_exec(
    node: Annotated[str, typer.Argument(help="master, agent-1, …")],
    command: Annotated[list[str], typer.Argument(help="command to run in the node (after --)")],
    name: LabName = "lab",
) -> None:
    """Run a command in a node's namespace and cgroup; its exit code is ours."""
    _need_root()
    with _node_errors("lab exec"):
        try:
            _lab(name).exec(node, command)
        except FileNotFoundError as exc:
            err.print(f"cannot run {command[0]!r}: {exc}")
            raise typer.Exit(127) from None


@lab_app.command("restart")
def lab_restart(node: Annotated[str, typer.Argument(help="master, agent-1, …")], name: LabName = "lab") -> None:
    """Stop a node's process (if it runs) and start it again; waits until it serves."""
    _need_root()
    with _node_errors("restart"):
        restarted = _lab(name).restart(node)
    console.print(f"{restarted.name} restarted, pid {restarted.pid}")


@lab_app.command("logs")
def lab_logs(node: Annotated[str, typer.Argument()], name: LabName = "lab",
             lines: Annotated[int, typer.Option("-n", help="last N lines (0 = all)")] = 0) -> None:
    """Print a node's log."""

    state = _lab(name).state()
    found = state.node(node) if state else None
    if found is None:
        names = ", ".join(n.name for n in state.nodes) if state else "(lab not up)"
        err.print(f"no node {node!r} in lab {name!r}; nodes: {names}")
        raise typer.Exit(2)
    text = Path(found.log).read_text(errors="replace") if found.log and Path(found.log).exists() else ""
    out = text.splitlines()[-lines:] if lines else text.splitlines()
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))


@lab_app.command("scenario")
def lab_scenario(which: Annotated[str, typer.Argument(help="seed (the default): the example apps and their VIPs; "
                                                           "edge: marathon-lb on the public agent, siege and autoscale; "
                                                           "frameworks: two batch frameworks weighted 1 and 2 under DRF")] = "seed",
                 name: LabName = "lab",
                 requests: Annotated[int, typer.Option(help="requests per VIP")] = 9,
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Deploy the seed example apps, curl their VIP names from agent-1 and say who answered from
    where; then where the metrics, Prometheus and Admin Router are, and how to look around.
    Exits 1 when an app is short of tasks, a request failed, or no answer crossed to another agent.

    ``edge``: marathon-lb on the public agent, the nginx app on :10000, a curl from outside, the
    HAProxy stats, then siege raising the load until marathon-lb-autoscale adds instances and
    stopping until it removes them, printed as it happens; exits 1 unless they rose and fell back."""
    _need_root()
    from navstar.lab import process_alive
    from navstar.scenario import run_scenario

    if which not in ("seed", "edge", "frameworks"):
        err.print(f"scenario {which!r}: expected seed, edge or frameworks")
        raise typer.Exit(2)
    state = _lab(name).state()
    if state is None:
        err.print(f"lab {name!r} is not up: run `navstar lab up --name {name}` first")
        raise typer.Exit(1)
    if which == "edge":
        _edge_scenario(state)
        return
    if which == "frameworks":
        _frameworks_scenario(state)
        return
    with console.status("deploying the example apps") as spinner:
        apps, vips = run_scenario(state, lambda msg: spinner.update(msg), requests=requests)
    tasks = [task for app in apps for task in app.tasks]
    agents = [n.name for n in state.nodes if n not in state.master_nodes and not n.public]
    crossed = any(v.from_other_agents for v in vips) or len(agents) < 2
    failed = any(a.running < a.instances for a in apps) or any(v.failures for v in vips) or not crossed
    if as_json:
        print(json.dumps({
            "nodes": [{"name": n.name, "namespace": n.namespace, "ip": n.ip, "pid": n.pid,
                       "up": process_alive(n.pid)} for n in state.nodes],
            "apps": [{"id": a.app_id, "instances": a.instances, "running": a.running, "addresses": a.addresses,
                      "note": a.message} for a in apps],
            "tasks": [{"id": t.task_id, "app": t.app_id, "agent": t.agent, "address": t.address} for t in tasks],
            "vips": [{"vip": v.name, "address": v.address, "from": v.source,
                      "backends": [{"address": b, "agent": agent} for b, agent in v.backends],
                      "answers": dict(v.answers), "answer_agents": v.answer_agents,
                      "from_other_agents": dict(v.from_other_agents), "failures": v.failures,
                      "dig_command": v.dig_command, "dig": v.dig}
                     for v in vips]}))
        raise typer.Exit(1 if failed else 0)

    table = _table("nodes", "node", "namespace", "underlay IP", "pid", "up")
    for node in state.nodes:
        table.add_row(node.name, node.namespace, node.ip, str(node.pid),
                      "[green]up[/]" if process_alive(node.pid) else "[red]down[/]")
    console.print(table)
    table = _table("apps", "app", "running", "note")
    for app in apps:
        table.add_row(app.app_id, f"{app.running}/{app.instances}", app.message)
    console.print(table)
    table = _table("tasks", "task", "agent", "address")
    for task in sorted(tasks, key=lambda t: (t.app_id, t.agent)):
        table.add_row(task.task_id, task.agent, task.address)
    console.print(table)
    on = sorted({t.agent for t in tasks})
    console.print(f"tasks on {len(on)} of {len(agents)} agents: {', '.join(on)}\n")
    table = _table(f"VIPs as {state.nodes[1].name} programs them", "VIP", "address", "backend", "on agent")
    for vip in vips:
        table.add_row(vip.name, vip.address, "\n".join(b for b, _ in vip.backends),
                      "\n".join(agent for _, agent in vip.backends))
    console.print(table)
    lab_exec = f"{_program()} lab exec --name {name}"
    for vip in vips:
        host, _, port = vip.name.rpartition(":")
        console.print(f"[bold]$ {lab_exec} {vip.source} -- {vip.dig_command}[/]", soft_wrap=True)
        console.print(vip.dig, soft_wrap=True, markup=False)
        console.print(f"[bold]$ {lab_exec} {vip.source} -- curl http://{host}:{port}/[/]"
                      f"  × {sum(vip.answers.values()) + vip.failures}", soft_wrap=True)
        table = _table(None, "answered by", "on agent", "requests")
        for who, count in vip.answers.most_common():
            agent = vip.answer_agents.get(who, "?")
            table.add_row(who, agent + (" (other agent)" if agent != vip.source else " (this agent)"), str(count))
        if vip.failures:
            table.add_row("[red]failed[/]", "", str(vip.failures))
        console.print(table)
        other = vip.from_other_agents
        console.print(f"{sum(other.values())} of {sum(vip.answers.values()) + vip.failures} requests from "
                      f"{vip.source} answered by backends on other agents"
                      + (f" ({', '.join(sorted(other))})" if other else "") + "\n", soft_wrap=True)
    _lab_guide(state, agents)
    if failed:
        if not crossed:
            err.print("[red]no VIP request was answered by a backend on another agent[/]")
        raise typer.Exit(1)


def _frameworks_scenario(state) -> None:
    from navstar.frameworks_scenario import run_frameworks
    from navstar.lab import LabError

    try:
        outcome = run_frameworks(state, console)
    except LabError as exc:
        err.print(f"[red]frameworks scenario:[/] {exc}")
        raise typer.Exit(1) from None
    if outcome.settled_after is None:
        err.print("[red]the dominant shares did not settle near 1:2 in time[/]")
        raise typer.Exit(1)
    console.print(f"DRF settled: batch-heavy holds twice batch-light's dominant share "
                  f"(±10%, mean of the last samples) after {outcome.settled_after:.0f} s")


def _edge_scenario(state) -> None:
    from navstar.edge import run_edge
    from navstar.lab import LabError

    try:
        outcome = run_edge(state, console)
    except LabError as exc:
        err.print(f"[red]edge scenario:[/] {exc}")
        raise typer.Exit(1) from None
    if not outcome.scaled_up_and_down:
        err.print(f"[red]autoscale did not go above 1 instance and back (peak {outcome.peak_instances}, "
                  f"final {outcome.final_instances})[/]")
        raise typer.Exit(1)


def _table(title: str | None, *columns: str) -> Table:
    """A table whose cells wrap (long names folded, never cut) at any console width."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _program() -> str:
    """How to call this ``navstar`` again (``.venv/bin/navstar`` from the checkout, as make runs it)."""
    program = Path(sys.argv[0])
    if program.name != "navstar" or not program.exists():
        return "navstar"
    try:
        return str(program.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(program.resolve())


def _lab_guide(state, agents: list[str]) -> None:
    """Where the metrics, Prometheus and Admin Router are, the commands to look around, the way out."""
    from navstar.frontdoor import ADMIN, password_file
    from navstar.prometheus import PORT as PROMETHEUS_PORT

    name, master = state.name, state.master
    navstar = _program()
    lab_exec = f"{navstar} lab exec --name {name}"
    lines = [
        "[bold]Admin Router[/] (the only way in from outside): "
        f"{state.front_door}/ — user {ADMIN}, password in {password_file(state)}",
        f"  .venv-dcos/bin/dcos cluster setup {state.front_door} --username {ADMIN} "
        f"--password \"$(cat {password_file(state)})\"",
        f"  curl -s -X POST {state.front_door}/acs/api/v1/auth/login -H 'Content-Type: application/json' "
        f"-d '{{\"uid\":\"{ADMIN}\",\"password\":\"...\"}}'   (then -H 'Authorization: token=<token>')",
        "[bold]metrics[/] (inside the lab):",
        *(f"  {lab_exec} {agent} -- curl -s http://127.0.0.1:61091/metrics" for agent in agents[:1]),
        f"  {lab_exec} {master.name} -- sh -c 'curl -s -H \"Authorization: token=$(cat {state.secret_file})\" "
        f"http://{master.ip}:5050/metrics'",
    ]
    if state.prometheus_pid:
        lines += [f"[bold]Prometheus[/] inside the master's namespace (127.0.0.1:{PROMETHEUS_PORT}, pid "
                  f"{state.prometheus_pid}); from outside, after a login, at {state.front_door}/prometheus/",
                  f"  {lab_exec} {master.name} -- curl -s 'http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/targets'",
                  f"  {lab_exec} {master.name} -- curl -s 'http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/alerts'"]
    else:
        lines.append(f"[bold]Prometheus[/]: not running (navstar lab up --name {name} --prometheus)")
    public = [n for n in state.nodes if n.public]
    lines += [
        "[bold]next[/]: north–south traffic through marathon-lb on the public agent "
        f"({public[0].ip}), siege and autoscaling:" if public else
        "[bold]next[/]: a lab with a public agent (navstar lab up --public-agents 1) runs the edge scenario:",
        f"  {navstar} lab scenario edge --name {name}",
        "[bold]packages[/] (Cosmos behind Admin Router, the local Universe at "
        f"http://{master.ip}:8082/repo inside):",
        f"  {navstar} package search --lab {name}      {navstar} package install nginx --app-id /nginx-pkg --yes --lab {name}"
        + ("" if not public else "      .venv-dcos/bin/dcos package install marathon-lb --yes"),
        "[bold]look around[/] (every listing takes --json):",
        f"  {navstar} lab status --name {name}",
        f"  {navstar} app list --lab {name}      {navstar} task list --lab {name}      "
        f"{navstar} node list --lab {name}",
        f"  {lab_exec} {agents[0] if agents else 'agent-1'} -- {navstar} vip list",
        f"  {lab_exec} {agents[0] if agents else 'agent-1'} -- dig @198.51.100.1 web.marathon.l4lb.thisdcos.directory",
        f"  {navstar} lab logs --name {name} {agents[0] if agents else 'agent-1'}",
        f"[bold]done?[/] {navstar} lab down" + ("   (or make lab-down)" if name == "lab" else f" --name {name}"),
    ]
    for line in lines:
        console.print(line, soft_wrap=True)


@lab_app.command("down")
def lab_down(name: LabName = "lab") -> None:
    """Remove everything the lab created (also after a partial or crashed start)."""
    _need_root()

    from navstar.lab import LabError

    try:
        removed = _lab(name).down()
    except LabError as exc:
        err.print(f"[red]lab down:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"lab {name!r}: removed {len(removed)} things" if removed else f"lab {name!r}: nothing to remove")


def main() -> None:
    app()
