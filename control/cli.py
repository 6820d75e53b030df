"""``navstar app|task|node …``: the master's Marathon and Mesos APIs from a terminal
(``navstar app group …`` and ``navstar app version …`` for groups and app versions).

Every command takes ``--master URL`` (the Marathon API; default: the running lab's master, read
through ``use_lab_master``), ``--token`` (default: ``$NAVSTAR_TOKEN``, then the lab's secret)
and ``--json`` (the API's answer as it came).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import typer
from rich.console import Console
from rich.table import Table

from control.roles import PUBLIC_ROLE

app_cli = typer.Typer(no_args_is_help=True, help="Marathon apps: add, list, show, scale, remove.")
task_cli = typer.Typer(no_args_is_help=True, help="Tasks the master knows.")
node_cli = typer.Typer(no_args_is_help=True, help="Agents registered with the master.")

MasterOpt = Annotated[str | None, typer.Option("--master", help="Marathon API URL (default: the lab's master)")]
LabOpt = Annotated[str, typer.Option("--lab", help="lab whose master to use when --master is not given")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="API token (default: $NAVSTAR_TOKEN or the lab's)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the API's JSON answer")]
ForceOpt = Annotated[bool, typer.Option("--force", help="override a deployment in progress")]

_STATE_STYLE = {"TASK_RUNNING": "green", "TASK_STAGING": "yellow", "TASK_STARTING": "yellow",
                "TASK_KILLING": "yellow", "TASK_UNREACHABLE": "red"}
err = Console(stderr=True)


# Where a lab's Marathon API is, a token for it and where its Mesos API is, by lab name (None:
# no such lab is up). Set by the composition root (``navstar.cli``), which knows about labs
# (and logs in to their Admin Router); this package does not.
LabMaster = Callable[[str], tuple[str, str | None, str] | None]
_lab_master: LabMaster | None = None


def use_lab_master(locate: LabMaster) -> None:
    """How commands find the master when ``--master`` is not given."""
    global _lab_master
    _lab_master = locate


class Api:
    """Where the master is and how to call it; failures become a message and exit code 1."""

    def __init__(self, master: str | None, lab: str, token: str | None, mesos: str | None = None) -> None:
        secret = token or os.environ.get("NAVSTAR_TOKEN")
        if master is None:
            found = _lab_master(lab) if _lab_master is not None else None
            if found is None:
                err.print(f"[red]no --master given and lab {lab!r} is not up[/] (start it with `navstar lab up`)")
                raise typer.Exit(2)
            master, lab_secret, mesos = found
            secret = secret or lab_secret
        self.marathon = master.rstrip("/")
        parts = urlsplit(self.marathon)
        self.mesos = (mesos or urlunsplit((parts.scheme, f"{parts.hostname}:5050", "", "", ""))).rstrip("/")
        self.headers = {"Authorization": f"token={secret}"} if secret else {}

    def call(self, method: str, path: str, *, mesos: bool = False, **kwargs: Any) -> Any:
        url = (self.mesos if mesos else self.marathon) + path
        try:
            headers = {**self.headers, **kwargs.pop("headers", {})}
            response = httpx.request(method, url, headers=headers, timeout=10, **kwargs)
        except httpx.HTTPError as exc:
            err.print(f"[red]cannot reach {url}:[/] {exc}")
            raise typer.Exit(1) from None
        if response.status_code >= 400:
            _print_error(response)
            raise typer.Exit(1)
        return response.json()


def _print_error(response: httpx.Response) -> None:
    try:
        body = response.json()
    except ValueError:
        err.print(f"[red]HTTP {response.status_code}:[/] {response.text[:300]}")
        return
    err.print(f"[red]HTTP {response.status_code}: {body.get('message', '')}[/]")
    for detail in body.get("details") or []:
        err.print(f"  {detail.get('path')}: {'; '.join(detail.get('errors', []))}")


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _app_path(app_id: str) -> str:
    return "/v2/apps/" + app_id.strip("/")


# -- apps ------------------------------------------------------------------------------------
@app_cli.command("add")
def app_add(file: Annotated[str, typer.Argument(help="app definition JSON ('-' for stdin)")],
            master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Create an app from a Marathon app definition."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except OSError as exc:
        err.print(f"[red]cannot read {file}:[/] {exc}")
        raise typer.Exit(2) from None
    api = Api(master, lab, token)
    created = api.call("POST", "/v2/apps", content=text.encode(), headers={"Content-Type": "application/json"})
    if as_json:
        _emit_json(created)
        return
    deployment = created.get("deployments", [{}])[0].get("id", "-") if created.get("deployments") else "-"
    Console().print(f"created [bold]{created['id']}[/] ({created['instances']} instances), deployment {deployment}")


@app_cli.command("list")
def app_list(master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Apps with their instances, running and healthy tasks."""
    apps = Api(master, lab, token).call("GET", "/v2/apps")["apps"]
    if as_json:
        _emit_json(apps)
        return
    table = Table(title="apps")
    for column in ("id", "instances", "running", "healthy", "cpus", "mem", "deploying"):
        table.add_column(column, overflow="fold")
    for app in apps:
        table.add_row(app["id"], str(app["instances"]), str(app["tasksRunning"]),
                      str(app["tasksHealthy"]) if app["healthChecks"] else "-", f"{app['cpus']:g}",
                      f"{app['mem']:g}", "yes" if app["deployments"] else "")
    Console().print(table)


@app_cli.command("show")
def app_show(app_id: Annotated[str, typer.Argument(help="app id, e.g. /shop/web")], master: MasterOpt = None,
             lab: LabOpt = "lab", token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One app: its definition and its tasks."""
    app = Api(master, lab, token).call("GET", _app_path(app_id))["app"]
    if as_json:
        _emit_json(app)
        return
    console = Console()
    console.print(f"[bold]{app['id']}[/]  version {app['version']}")
    console.print(f"  cmd: {app.get('cmd') or app.get('args') or '-'}")
    image = (app.get("container") or {}).get("docker", {}) or {}
    if image.get("image"):
        console.print(f"  image: {image['image']} ({image.get('network') or 'HOST'})")
    console.print(f"  instances {app['instances']}, cpus {app['cpus']:g}, mem {app['mem']:g}, "
                  f"running {app['tasksRunning']}, staged {app['tasksStaged']}")
    if app.get("constraints"):
        console.print(f"  constraints: {app['constraints']}")
    if app.get("lastTaskFailure"):
        failure = app["lastTaskFailure"]
        console.print(f"  [red]last failure[/] {failure['timestamp']} {failure['state']}: {failure['message']}")
    _task_table(app.get("tasks", []), f"tasks of {app['id']}")


@app_cli.command("scale")
def app_scale(app_id: Annotated[str, typer.Argument(help="app id")],
              instances: Annotated[int, typer.Argument(min=0, help="number of instances")],
              force: ForceOpt = False, master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None,
              as_json: JsonOpt = False) -> None:
    """Set an app's number of instances."""
    answer = Api(master, lab, token).call("PUT", _app_path(app_id), json={"instances": instances},
                                          params={"force": str(force).lower()})
    if as_json:
        _emit_json(answer)
        return
    Console().print(f"scaling {app_id} to {instances}, deployment {answer['deploymentId']}")


@app_cli.command("remove")
def app_remove(app_id: Annotated[str, typer.Argument(help="app id")], force: ForceOpt = False,
               master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Remove an app and kill its tasks."""
    answer = Api(master, lab, token).call("DELETE", _app_path(app_id), params={"force": str(force).lower()})
    if as_json:
        _emit_json(answer)
        return
    Console().print(f"removing {app_id}, deployment {answer['deploymentId']}")


# -- groups and versions -----------------------------------------------------------------------
group_cli = typer.Typer(no_args_is_help=True, help="Marathon groups: add, list, show, scale, update, remove.")
version_cli = typer.Typer(no_args_is_help=True, help="An app's versions: list, show, rollback.")
app_cli.add_typer(group_cli, name="group")
app_cli.add_typer(version_cli, name="version")


def _group_path(group_id: str) -> str:
    return "/v2/groups/" + group_id.strip("/")


def _read_definition(file: str) -> bytes:
    try:
        return (sys.stdin.read() if file == "-" else Path(file).read_text()).encode()
    except OSError as exc:
        err.print(f"[red]cannot read {file}:[/] {exc}")
        raise typer.Exit(2) from None


def _deployment_line(what: str, answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _emit_json(answer)
    else:
        Console().print(f"{what}, deployment {answer['deploymentId']}")


def _group_rows(group: dict[str, Any]) -> list[tuple[str, int, int, str]]:
    """(id, apps directly in it, apps below it, dependencies), the group first, then its subgroups."""
    def count(node: dict[str, Any]) -> int:
        return len(node.get("apps", [])) + sum(count(g) for g in node.get("groups", []))
    rows = [(group["id"], len(group.get("apps", [])), count(group), ", ".join(group.get("dependencies", [])))]
    for sub in group.get("groups", []):
        rows += _group_rows(sub)
    return rows


@group_cli.command("add")
def group_add(file: Annotated[str, typer.Argument(help="group definition JSON ('-' for stdin)")],
              master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Create a group (its apps start in dependency order)."""
    answer = Api(master, lab, token).call("POST", "/v2/groups", content=_read_definition(file),
                                          headers={"Content-Type": "application/json"})
    _deployment_line("group created", answer, as_json)


@group_cli.command("list")
def group_list(master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None,
               as_json: JsonOpt = False) -> None:
    """Every group with its apps."""
    root = Api(master, lab, token).call("GET", "/v2/groups")
    if as_json:
        _emit_json(root.get("groups", []))
        return
    table = Table(title="groups")
    for column in ("id", "apps", "apps below", "depends on"):
        table.add_column(column, overflow="fold")
    for group in root.get("groups", []):
        for gid, direct, below, deps in _group_rows(group):
            table.add_row(gid, str(direct), str(below), deps or "-")
    Console().print(table)


@group_cli.command("show")
def group_show(group_id: Annotated[str, typer.Argument(help="group id, e.g. /prod")], master: MasterOpt = None,
               lab: LabOpt = "lab", token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One group: its apps (instances, running, dependencies) and subgroups."""
    group = Api(master, lab, token).call("GET", _group_path(group_id))
    if as_json:
        _emit_json(group)
        return
    table = Table(title=f"group {group['id']} (version {group['version']})")
    for column in ("app", "instances", "running", "healthy", "depends on"):
        table.add_column(column, overflow="fold")

    def add(node: dict[str, Any]) -> None:
        for app in node.get("apps", []):
            table.add_row(app["id"], str(app["instances"]), str(app.get("tasksRunning", 0)),
                          str(app.get("tasksHealthy", 0)) if app.get("healthChecks") else "-",
                          ", ".join(app.get("dependencies", [])) or "-")
        for sub in node.get("groups", []):
            add(sub)
    add(group)
    Console().print(table)


@group_cli.command("scale")
def group_scale(group_id: Annotated[str, typer.Argument(help="group id")],
                factor: Annotated[float, typer.Argument(min=0, help="multiply every app's instances by this")],
                force: ForceOpt = False, master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """Scale every app in a group by a factor (Marathon's scaleBy)."""
    answer = Api(master, lab, token).call("PUT", _group_path(group_id), json={"scaleBy": factor},
                                          params={"force": str(force).lower()})
    _deployment_line(f"scaling {group_id} by {factor:g}", answer, as_json)


@group_cli.command("update")
def group_update(group_id: Annotated[str, typer.Argument(help="group id")],
                 file: Annotated[str, typer.Argument(help="group definition JSON ('-' for stdin)")],
                 force: ForceOpt = False, master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Change a group to the definition given (apps listed replace its apps)."""
    answer = Api(master, lab, token).call("PUT", _group_path(group_id), content=_read_definition(file),
                                          headers={"Content-Type": "application/json"},
                                          params={"force": str(force).lower()})
    _deployment_line(f"updating {group_id}", answer, as_json)


@group_cli.command("remove")
def group_remove(group_id: Annotated[str, typer.Argument(help="group id")], force: ForceOpt = False,
                 master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Remove a group: its apps stop, dependents first."""
    answer = Api(master, lab, token).call("DELETE", _group_path(group_id), params={"force": str(force).lower()})
    _deployment_line(f"removing {group_id}", answer, as_json)


@version_cli.command("list")
def version_list(app_id: Annotated[str, typer.Argument(help="app id")], master: MasterOpt = None,
                 lab: LabOpt = "lab", token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """An app's versions, newest first."""
    versions = Api(master, lab, token).call("GET", _app_path(app_id) + "/versions")["versions"]
    if as_json:
        _emit_json(versions)
        return
    for version in versions:
        Console().print(version)


@version_cli.command("show")
def version_show(app_id: Annotated[str, typer.Argument(help="app id")],
                 version: Annotated[str, typer.Argument(help="the version (a timestamp from version list)")],
                 master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None) -> None:
    """An app's definition at a version (JSON)."""
    _emit_json(Api(master, lab, token).call("GET", f"{_app_path(app_id)}/versions/{version}"))


@version_cli.command("rollback")
def version_rollback(app_id: Annotated[str, typer.Argument(help="app id")],
                     version: Annotated[str, typer.Argument(help="the version to go back to")],
                     force: ForceOpt = False, master: MasterOpt = None, lab: LabOpt = "lab",
                     token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Store an earlier version's definition again (tasks replaced when it differs)."""
    answer = Api(master, lab, token).call("PUT", _app_path(app_id), json={"version": version},
                                          params={"force": str(force).lower()})
    _deployment_line(f"rolling {app_id} back to {version}", answer, as_json)


# -- tasks -----------------------------------------------------------------------------------
def _task_table(tasks: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for column in ("task", "app", "agent:ports", "task IPs", "state", "healthy"):
        table.add_column(column, overflow="fold")
    for task in tasks:
        # Host ports live on the agent; task IPs are the container's (overlay, bridge) or the agent's.
        ports = ",".join(map(str, task.get("ports", [])))
        ips = ",".join(a["ipAddress"] for a in task.get("ipAddresses", []))
        results = task.get("healthCheckResults") or []
        healthy = "-" if not results else ("[green]yes[/]" if all(r["alive"] for r in results) else "[red]no[/]")
        style = _STATE_STYLE.get(task["state"], "white")
        table.add_row(task["id"], task["appId"], f"{task['host']}:{ports}" if ports else task["host"], ips,
                      f"[{style}]{task['state']}[/]", healthy)
    Console().print(table)


@task_cli.command("list")
def task_list(app_id: Annotated[str | None, typer.Option("--app", help="only this app's tasks")] = None,
              master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None, as_json: JsonOpt = False,
              mesos: Annotated[str | None, typer.Option("--mesos", help="Mesos API URL (default: master:5050)")]
              = None) -> None:
    """Live tasks: Marathon's and (without --app) the other frameworks': where they run, on which
    ports, their state and health."""
    path = _app_path(app_id) + "/tasks" if app_id else "/v2/tasks"
    api = Api(master, lab, token, mesos)
    tasks = api.call("GET", path)["tasks"]
    if not app_id:
        try:
            tasks += framework_tasks(api.call("GET", "/master/state", mesos=True))
        except typer.Exit:
            err.print("[yellow]the other frameworks' tasks are left out: the Mesos API did not answer[/]")
    if as_json:
        _emit_json(tasks)
        return
    _task_table(tasks, "tasks")


def framework_tasks(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The live tasks of the frameworks other than Marathon (v1 scheduler API), in the shape of
    Marathon's ``/v2/tasks`` entries, their ``appId`` the framework's name in parentheses."""
    hosts = {slave["id"]: slave["hostname"] for slave in state.get("slaves", [])}
    out = []
    for framework in state.get("frameworks", []):
        if framework.get("name") == "marathon":
            continue
        for task in framework.get("tasks", []):
            ports = [p["number"] for p in task.get("discovery", {}).get("ports", {}).get("ports", [])]
            running = next((s for s in reversed(task.get("statuses", [])) if s.get("container_status")), {})
            ips = [ip["ip_address"] for info in running.get("container_status", {}).get("network_infos", [])
                   for ip in info.get("ip_addresses", [])]
            out.append({"id": task["id"], "appId": f"({framework['name']})", "framework": framework["name"],
                        "frameworkId": framework["id"], "host": hosts.get(task["slave_id"], task["slave_id"]),
                        "ports": ports, "ipAddresses": [{"ipAddress": ip, "protocol": "IPv4"} for ip in ips],
                        "state": task["state"]})
    return out


# -- nodes -----------------------------------------------------------------------------------
def node_type(slave: dict[str, Any]) -> str:
    """As the dcos CLI's TYPE column: ``agent (public)`` for an agent with attribute
    ``public_ip:true`` or resources reserved for ``slave_public``."""
    public = str(slave.get("attributes", {}).get("public_ip", "")).lower() == "true" \
        or PUBLIC_ROLE in slave.get("reserved_resources", {})
    return "agent (public)" if public else "agent"


@node_cli.command("list")
def node_list(master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None, as_json: JsonOpt = False,
              mesos: Annotated[str | None, typer.Option("--mesos", help="Mesos API URL (default: master:5050)")]
              = None) -> None:
    """Agents: address, reachability, resources, tasks, overlay subnet and container networks."""
    api = Api(master, lab, token, mesos)
    state = api.call("GET", "/master/state", mesos=True)
    view = api.call("GET", "/v1/view", mesos=True)
    overlay = {a["agent_id"]: a.get("overlay") for a in view["agents"]}
    networks = {a["agent_id"]: a.get("networks") for a in view["agents"]}
    tasks: dict[str, int] = {}
    for framework in state["frameworks"]:
        for task in framework["tasks"]:
            tasks[task["slave_id"]] = tasks.get(task["slave_id"], 0) + 1
    nodes = [{**slave, "tasks": tasks.get(slave["id"], 0), "overlay": overlay.get(slave["id"]),
              "networks": networks.get(slave["id"])} for slave in state["slaves"]]
    if as_json:
        _emit_json(nodes)
        return
    table = Table(title=f"agents of {state['leader']}")
    for column in ("agent", "type", "address", "state", "cpus", "mem", "ports", "tasks", "overlay", "networks"):
        table.add_column(column, overflow="fold")
    for node in nodes:
        res = node["resources"]
        address = node["pid"].rsplit("@", 1)[-1]
        status = "[green]reachable[/]" if node["active"] else "[red]unreachable[/]"
        table.add_row(node["id"], node_type(node), address, status, f"{res['cpus']:g}", f"{res['mem']:g}",
                      res.get("ports", ""), str(node["tasks"]), (node["overlay"] or {}).get("subnet", "-"),
                      ", ".join(node["networks"]) if node["networks"] is not None else "-")
    Console().print(table)


@node_cli.command("remove")
def node_remove(agent_id: Annotated[str, typer.Argument(help="the agent to remove for good")],
                force: Annotated[bool, typer.Option("--force", help="remove it even while it is reachable")] = False,
                master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None,
                mesos: Annotated[str | None, typer.Option("--mesos", help="Mesos API URL (default: master:5050)")]
                = None) -> None:
    """Remove an agent for good: its tasks are replaced elsewhere, its overlay subnet is freed."""
    api = Api(master, lab, token, mesos)
    api.call("DELETE", f"/v1/agents/{agent_id}", mesos=True, params={"force": "true"} if force else {})
    Console().print(f"agent {agent_id} removed")
