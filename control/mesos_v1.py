"""Mesos v1 scheduler API wire format (JSON): reading calls and ``TaskInfo``, writing events.

Field names and enum strings are Mesos' (``include/mesos/v1/scheduler/scheduler.proto`` and
``mesos.proto``): ids are ``{"value": ...}``, resources are ``{"name", "type": "SCALAR"|"RANGES",
"scalar": {"value"}, "ranges": {"range": [{"begin", "end"}]}}``, a status ``uuid`` is base64 bytes.
Pure: no I/O, no state. A call that does not validate raises ``CallInvalid`` with the sentence
the face answers 400 with.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from control.protocol import TASK_ID_PATTERN

CALL_TYPES = ("SUBSCRIBE", "TEARDOWN", "ACCEPT", "DECLINE", "REVIVE", "SUPPRESS", "KILL", "ACKNOWLEDGE",
              "RECONCILE", "SHUTDOWN", "MESSAGE", "REQUEST", "ACCEPT_INVERSE_OFFERS", "DECLINE_INVERSE_OFFERS",
              "ACKNOWLEDGE_OPERATION_STATUS", "RECONCILE_OPERATIONS", "UPDATE_FRAMEWORK")
SCALARS = ("cpus", "mem", "disk", "gpus")


class CallInvalid(ValueError):
    """The call does not validate; ``str()`` is the reason (Mesos answers 400 with it)."""


def value_of(obj: Any, what: str) -> str:
    """``{"value": "x"}`` → ``"x"``; raises ``CallInvalid`` naming ``what`` otherwise."""
    if not isinstance(obj, dict) or not isinstance(obj.get("value"), str) or not obj["value"]:
        raise CallInvalid(f"Expecting '{what}' to be present with a non-empty 'value'")
    return str(obj["value"])


def new_status_uuid() -> str:
    return base64.b64encode(uuid.uuid4().bytes).decode()


@dataclass
class Call:
    type: str
    framework_id: str | None
    body: dict[str, Any]            # the type's own message (``call["accept"]`` …), {} if absent


def parse_call(raw: Any) -> Call:
    """A JSON scheduler ``Call``. Raises ``CallInvalid``."""
    if not isinstance(raw, dict):
        raise CallInvalid("Expecting a JSON object")
    kind = raw.get("type")
    if kind not in CALL_TYPES:
        raise CallInvalid(f"Expecting 'type' to be one of {', '.join(CALL_TYPES)}, got {kind!r}")
    framework_id = value_of(raw["framework_id"], "framework_id") if "framework_id" in raw else None
    body = raw.get(kind.lower(), {})
    if not isinstance(body, dict):
        raise CallInvalid(f"Expecting '{kind.lower()}' to be an object")
    if kind == "SUBSCRIBE":
        info = body.get("framework_info")
        if not isinstance(info, dict):
            raise CallInvalid("Expecting 'subscribe' to be present")
        if not isinstance(info.get("user"), str) or not isinstance(info.get("name"), str):
            raise CallInvalid("Expecting 'framework_info.user' and 'framework_info.name' to be present")
        if "id" in info and framework_id is not None and value_of(info["id"], "framework_info.id") != framework_id:
            raise CallInvalid("'framework_id' differs from 'subscribe.framework_info.id'")
        if framework_id is None and "id" in info:
            framework_id = value_of(info["id"], "framework_info.id")
    elif framework_id is None:
        raise CallInvalid("Expecting 'framework_id' to be present")
    required = {"ACCEPT": "accept", "DECLINE": "decline", "KILL": "kill", "ACKNOWLEDGE": "acknowledge"}
    if kind in required and required[kind] not in raw:
        raise CallInvalid(f"Expecting '{required[kind]}' to be present")
    return Call(kind, framework_id, body)


@dataclass
class FrameworkSpec:
    """What ``SUBSCRIBE.framework_info`` says (and what is kept of it)."""

    name: str
    user: str
    role: str = "*"
    hostname: str = ""
    principal: str | None = None
    webui_url: str = ""
    failover_timeout: float = 0.0
    checkpoint: bool = False
    capabilities: list[str] = field(default_factory=list)

    def info_json(self, framework_id: str) -> dict[str, Any]:
        info: dict[str, Any] = {"id": {"value": framework_id}, "name": self.name, "user": self.user,
                                "roles": [self.role], "role": self.role, "hostname": self.hostname,
                                "failover_timeout": self.failover_timeout, "checkpoint": self.checkpoint,
                                "capabilities": [{"type": c} for c in self.capabilities]}
        if self.principal:
            info["principal"] = self.principal
        if self.webui_url:
            info["webui_url"] = self.webui_url
        return info


def framework_spec(info: dict[str, Any]) -> FrameworkSpec:
    roles = info.get("roles")
    role = info.get("role", "*")
    if isinstance(roles, list) and roles:
        if len(roles) > 1:
            raise CallInvalid("Expecting one role in 'framework_info.roles' (multi-role frameworks are not supported)")
        role = roles[0]
    if not isinstance(role, str) or not re.fullmatch(r"\*|[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*",
                                                     role):
        raise CallInvalid(f"Expecting 'framework_info.role' to be '*' or a role name, got {role!r}")
    timeout = info.get("failover_timeout", 0.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
        raise CallInvalid("Expecting 'framework_info.failover_timeout' to be a number of seconds ≥ 0")
    capabilities = [c.get("type") for c in info.get("capabilities", []) if isinstance(c, dict)]
    return FrameworkSpec(name=info["name"], user=info["user"], role=role, hostname=str(info.get("hostname") or ""),
                         principal=info.get("principal") or None, webui_url=str(info.get("webui_url") or ""),
                         failover_timeout=float(timeout), checkpoint=bool(info.get("checkpoint", False)),
                         capabilities=[str(c) for c in capabilities if c])


# ---- resources ---------------------------------------------------------------------------

def resources_json(scalars: dict[str, float], port_ranges: list[tuple[int, int]], role: str = "*"
                   ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in SCALARS:
        if scalars.get(name, 0) > 0:
            out.append({"name": name, "type": "SCALAR", "scalar": {"value": round(scalars[name], 3)}, "role": role,
                        "allocation_info": {"role": role}})
    if port_ranges:
        out.append({"name": "ports", "type": "RANGES", "role": role, "allocation_info": {"role": role},
                    "ranges": {"range": [{"begin": b, "end": e} for b, e in port_ranges]}})
    return out


def read_resources(raw: Any, where: str) -> tuple[dict[str, float], list[int]]:
    """A ``TaskInfo.resources`` list → (scalars, host ports). Raises ``CallInvalid``."""
    if not isinstance(raw, list):
        raise CallInvalid(f"Expecting '{where}' to be a list of resources")
    scalars: dict[str, float] = {}
    ports: list[int] = []
    for index, resource in enumerate(raw):
        name = resource.get("name") if isinstance(resource, dict) else None
        if name in SCALARS and resource.get("type", "SCALAR") == "SCALAR":
            value = (resource.get("scalar") or {}).get("value")
            if not isinstance(value, int | float) or value < 0:
                raise CallInvalid(f"Expecting '{where}[{index}].scalar.value' to be a number ≥ 0")
            scalars[name] = scalars.get(name, 0.0) + float(value)
        elif name == "ports" and resource.get("type", "RANGES") == "RANGES":
            for span in (resource.get("ranges") or {}).get("range", []):
                begin, end = span.get("begin"), span.get("end")
                if not isinstance(begin, int) or not isinstance(end, int) or not 0 < begin <= end < 65536 \
                        or end - begin > 1000:
                    raise CallInvalid(f"Expecting '{where}[{index}].ranges' to hold port ranges")
                ports.extend(range(begin, end + 1))
        else:
            raise CallInvalid(f"Unsupported resource '{where}[{index}]': {name!r}")
    return scalars, ports


def ranges_of(ports: set[int] | list[int]) -> list[tuple[int, int]]:
    spans: list[list[int]] = []
    for port in sorted(set(ports)):
        if spans and port == spans[-1][1] + 1:
            spans[-1][1] = port
        else:
            spans.append([port, port])
    return [(b, e) for b, e in spans]


# ---- TaskInfo ----------------------------------------------------------------------------

@dataclass
class TaskSpec:
    """A ``LAUNCH`` operation's ``TaskInfo``, read."""

    task_id: str
    name: str
    agent_id: str
    scalars: dict[str, float]
    ports: list[int]
    cmd: str | None = None
    args: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    network_name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


def task_spec(raw: Any, index: int) -> TaskSpec:
    """Raises ``CallInvalid`` with the reason the task ends ``TASK_ERROR``."""
    where = f"task_infos[{index}]"
    if not isinstance(raw, dict):
        raise CallInvalid(f"Expecting '{where}' to be a TaskInfo object")
    task_id = value_of(raw.get("task_id"), f"{where}.task_id")
    if not re.fullmatch(TASK_ID_PATTERN, task_id):
        raise CallInvalid(f"Task id {task_id!r} is invalid: letters, digits, '.', '_' and '-' only")
    agent = raw.get("agent_id", raw.get("slave_id"))
    agent_id = value_of(agent, f"{where}.agent_id")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CallInvalid(f"Expecting '{where}.name' to be present")
    if "executor" in raw:
        raise CallInvalid("Task uses an executor: only command tasks ('command') are supported")
    command = raw.get("command")
    if not isinstance(command, dict):
        raise CallInvalid(f"Expecting '{where}.command' to be present")
    scalars, ports = read_resources(raw.get("resources", []), f"{where}.resources")
    shell = command.get("shell", True)
    value = command.get("value")
    arguments = command.get("arguments") or []
    if shell and not isinstance(value, str):
        raise CallInvalid(f"Expecting '{where}.command.value' for a shell command")
    env = {}
    for variable in ((command.get("environment") or {}).get("variables") or []):
        if isinstance(variable, dict) and isinstance(variable.get("name"), str):
            env[variable["name"]] = str(variable.get("value", ""))
    network = None
    for info in ((raw.get("container") or {}).get("network_infos") or []):
        if isinstance(info, dict) and info.get("name"):
            network = str(info["name"])
    labels = {str(label.get("key")): str(label.get("value", ""))
              for label in ((raw.get("labels") or {}).get("labels") or []) if isinstance(label, dict)}
    return TaskSpec(task_id=task_id, name=name, agent_id=agent_id, scalars=scalars, ports=ports,
                    cmd=value if shell else None,
                    args=None if shell else [str(a) for a in ([value] if value else []) + list(arguments)],
                    env=env, user=command.get("user"), network_name=network, labels=labels)


# ---- events ------------------------------------------------------------------------------

def record(event: dict[str, Any]) -> bytes:
    """One RecordIO record: the JSON's length in bytes, a newline, the JSON (compact, one line)."""
    body = json.dumps(event, separators=(",", ":")).encode()
    return str(len(body)).encode() + b"\n" + body


def status_json(task_id: str, agent_id: str, state: str, timestamp: float, *, message: str = "",
                reason: str | None = None, source: str = "SOURCE_EXECUTOR", status_uuid: str | None = None,
                healthy: bool | None = None, ip_addresses: list[str] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"task_id": {"value": task_id}, "agent_id": {"value": agent_id}, "state": state,
                              "source": source, "timestamp": timestamp}
    if message:
        status["message"] = message
    if reason:
        status["reason"] = reason
    if status_uuid:
        status["uuid"] = status_uuid
    if healthy is not None:
        status["healthy"] = healthy
    if ip_addresses:
        status["container_status"] = {"network_infos": [{"ip_addresses": [{"ip_address": ip}
                                                                          for ip in ip_addresses]}]}
    return status
