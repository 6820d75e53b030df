"""Marathon app definitions: validation with Marathon's defaults and its 422 error shape.

``parse_app(raw)`` turns posted JSON into an ``AppDefinition`` (or raises ``AppInvalid`` whose
``details`` are Marathon's ``[{"path": "/healthChecks(0)/portIndex", "errors": [...]}]``), and
``AppDefinition.to_marathon()`` renders the app the way Marathon answers ``GET /v2/apps/{id}``.

Both generations of Marathon's networking JSON are accepted as users post them: 1.4
(``container.docker.network`` HOST/BRIDGE/USER, ``ipAddress.networkName``, ``portMappings`` inside
``docker``) and 1.5 (``networks``, ``container.portMappings``), with ``hostPort`` or ``host_port``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

from cluster.view import protocols_of
from control.agent.images import ImageMap
from control.roles import UNRESERVED, role_problem

# A container network is any CNI network an agent has (placement sends tasks only there);
# its name follows the CNI specification's rule.
DEFAULT_NETWORK = "dcos"
NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
NETWORK_NAME_RULE = "a CNI network name: letters, digits, '_', '.' and '-', starting with a letter or digit"
CONSTRAINT_OPERATORS = ("UNIQUE", "CLUSTER", "GROUP_BY", "LIKE", "UNLIKE", "MAX_PER", "IS")
PATH_SEGMENT = re.compile(r"^(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])$")
# Fields Marathon computes; a client that PUTs back what it GOT sends them, and Marathon ignores them.
READ_ONLY_FIELDS = {
    "version", "versionInfo", "tasks", "tasksStaged", "tasksRunning", "tasksHealthy", "tasksUnhealthy",
    "deployments", "lastTaskFailure", "taskStats", "readinessCheckResults", "counts",
}


class AppInvalid(Exception):
    """Marathon's 422: ``{"message": "Object is not valid", "details": [...]}``."""

    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{d['path']}: {', '.join(d['errors'])}" for d in details))
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"message": "Object is not valid", "details": self.details}


class AppExists(Exception):
    """Marathon's 409 for creating an app whose id is taken."""

    def __init__(self, app_id: str) -> None:
        super().__init__(f"An app with id [{app_id}] already exists.")
        self.app_id = app_id


class AppLocked(Exception):
    """Marathon's 409 for changing an app while deployments run (``?force=true`` overrides)."""

    def __init__(self, app_id: str, deployment_ids: list[str]) -> None:
        super().__init__("App is locked by one or more deployments. Override with the option "
                         f"'?force=true'. View details at '/v2/deployments/{deployment_ids[0]}'.")
        self.app_id = app_id
        self.deployment_ids = deployment_ids


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class PortDefinition(_Model):
    port: int = Field(default=0, ge=0, le=65535)
    protocol: Literal["tcp", "udp", "udp,tcp", "tcp,udp"] = "tcp"
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class PortMapping(_Model):
    container_port: int = Field(default=0, ge=0, le=65535,
                                validation_alias=AliasChoices("containerPort", "container_port"))
    host_port: int | None = Field(default=None, ge=0, le=65535,
                                  validation_alias=AliasChoices("hostPort", "host_port"))
    service_port: int = Field(default=0, ge=0, le=65535,
                              validation_alias=AliasChoices("servicePort", "service_port"))
    protocol: Literal["tcp", "udp", "udp,tcp", "tcp,udp"] = "tcp"
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    network_names: list[str] | None = None


class DockerSpec(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    image: str = Field(min_length=1)
    network: Literal["HOST", "BRIDGE", "USER", "NONE"] | None = None
    port_mappings: list[PortMapping] | None = Field(
        default=None, validation_alias=AliasChoices("portMappings", "port_mappings"))
    privileged: bool = False
    parameters: list[dict[str, str]] = Field(default_factory=list)
    force_pull_image: bool = False


class ContainerSpec(_Model):
    type: Literal["DOCKER", "MESOS"] = "DOCKER"
    docker: DockerSpec | None = None
    port_mappings: list[PortMapping] | None = Field(
        default=None, validation_alias=AliasChoices("portMappings", "port_mappings"))
    volumes: list[dict[str, Any]] = Field(default_factory=list)


class NetworkSpec(_Model):
    mode: Literal["host", "container", "container/bridge"] = "container"
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class IpAddressSpec(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    network_name: str | None = None
    groups: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)


class CommandSpec(_Model):
    value: str = Field(min_length=1)


class HealthCheck(_Model):
    protocol: Literal["HTTP", "HTTPS", "TCP", "COMMAND", "MESOS_HTTP", "MESOS_HTTPS", "MESOS_TCP"] = "HTTP"
    path: str | None = None
    port_index: int | None = Field(default=None, ge=0)
    port: int | None = Field(default=None, ge=0, le=65535)
    command: CommandSpec | None = None
    grace_period_seconds: int = Field(default=300, ge=0)
    interval_seconds: int = Field(default=60, ge=1)
    timeout_seconds: int = Field(default=20, ge=1)
    max_consecutive_failures: int = Field(default=3, ge=0)
    delay_seconds: int = Field(default=15, ge=0)
    ignore_http1xx: bool = Field(default=False, alias="ignoreHttp1xx")

    @field_validator("command", mode="before")
    @classmethod
    def _command_string(cls, value: Any) -> Any:
        # Marathon accepts {"value": "..."}; the Python client also sends a bare string.
        return {"value": value} if isinstance(value, str) else value


class UpgradeStrategy(_Model):
    minimum_health_capacity: float = Field(default=1.0, ge=0, le=1)
    maximum_over_capacity: float = Field(default=1.0, ge=0, le=1)


class UnreachableStrategy(_Model):
    """How long a task whose agent went quiet is waited for: replaced after ``inactiveAfterSeconds``,
    forgotten (and killed should it return) after ``expungeAfterSeconds``. Marathon's defaults,
    so an agent restarted within five minutes keeps its tasks."""
    inactive_after_seconds: int = Field(default=300, ge=0)
    expunge_after_seconds: int = Field(default=600, ge=0)


# An object, or "disabled": never replaced nor expunged (Marathon's UnreachableDisabled). The
# discriminator tries one branch only, so an error names the field, not both alternatives (the
# tags carry "[" so _details_from leaves them out of the path, as pydantic's own union labels).
UnreachableChoice = Annotated[
    Annotated[UnreachableStrategy, Tag("object[UnreachableEnabled]")]
    | Annotated[Literal["disabled"], Tag("string[UnreachableDisabled]")],
    Discriminator(lambda value: "string[UnreachableDisabled]" if isinstance(value, str) else "object[UnreachableEnabled]"),
]


class VersionInfo(_Model):
    last_scaling_at: str
    last_config_change_at: str


def task_protocol(marathon_protocol: str) -> str:
    """Marathon's ``tcp``, ``udp``, ``udp,tcp`` or ``tcp,udp`` as a task port carries it."""
    return "udp,tcp" if "," in marathon_protocol else marathon_protocol


class AppDefinition(_Model):
    id: str
    cmd: str | None = Field(default=None, min_length=1)
    args: list[str] | None = None
    user: str | None = None
    env: dict[str, str | dict[str, str]] = Field(default_factory=dict)
    instances: int = Field(default=1, ge=0)
    cpus: float = Field(default=1.0, ge=0)
    mem: float = Field(default=128.0, ge=0)
    disk: float = Field(default=0.0, ge=0)
    gpus: int = Field(default=0, ge=0)
    executor: str = ""
    constraints: list[list[str]] = Field(default_factory=list)
    uris: list[str] = Field(default_factory=list)
    fetch: list[dict[str, Any]] = Field(default_factory=list)
    store_urls: list[str] = Field(default_factory=list)
    backoff_seconds: float = Field(default=1.0, ge=0)
    backoff_factor: float = Field(default=1.15, ge=1.0)
    max_launch_delay_seconds: float = Field(default=3600.0, ge=0)
    container: ContainerSpec | None = None
    health_checks: list[HealthCheck] = Field(default_factory=list)
    readiness_checks: list[dict[str, Any]] = Field(default_factory=list)
    dependencies: list[str] = Field(default_factory=list)
    upgrade_strategy: UpgradeStrategy = Field(default_factory=UpgradeStrategy)
    labels: dict[str, str] = Field(default_factory=dict)
    accepted_resource_roles: list[str] | None = None
    ip_address: IpAddressSpec | None = None
    networks: list[NetworkSpec] | None = None
    residency: dict[str, Any] | None = None
    secrets: dict[str, Any] = Field(default_factory=dict)
    task_kill_grace_period_seconds: float | None = Field(default=None, ge=0)
    unreachable_strategy: UnreachableChoice = Field(default_factory=UnreachableStrategy)
    kill_selection: Literal["YOUNGEST_FIRST", "OLDEST_FIRST"] = "YOUNGEST_FIRST"
    ports: list[int] | None = None
    port_definitions: list[PortDefinition] | None = None
    require_ports: bool = False
    role: str | None = Field(default=None, min_length=1)
    # Set by the master, never by the user.
    version: str | None = None
    version_info: VersionInfo | None = None

    @field_validator("role")
    @classmethod
    def _mesos_role(cls, value: str | None) -> str | None:
        problem = None if value is None else role_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    # -- derived views -------------------------------------------------------------------
    @property
    def network_mode(self) -> Literal["host", "bridge", "container"]:
        if self.networks:
            mode = self.networks[0].mode
            return {"host": "host", "container/bridge": "bridge"}.get(mode, "container")  # type: ignore[return-value]
        docker = self.container.docker if self.container else None
        if docker and docker.network == "BRIDGE":
            return "bridge"
        if (docker and docker.network == "USER") or self.ip_address is not None:
            return "container"
        return "host"

    @property
    def network_name(self) -> str | None:
        if self.network_mode != "container":
            return None
        if self.networks and self.networks[0].name:
            return self.networks[0].name
        if self.ip_address and self.ip_address.network_name:
            return self.ip_address.network_name
        return DEFAULT_NETWORK

    @property
    def port_mappings(self) -> list[PortMapping]:
        if self.container is None:
            return []
        if self.container.port_mappings is not None:
            return self.container.port_mappings
        if self.container.docker and self.container.docker.port_mappings is not None:
            return self.container.docker.port_mappings
        return []

    @property
    def uses_port_mappings(self) -> bool:
        return self.network_mode in ("bridge", "container")

    @property
    def port_count(self) -> int:
        return len(self.port_mappings) if self.uses_port_mappings else len(self.port_definitions or [])

    @property
    def effective_role(self) -> str:
        """The role the app's tasks run under (its framework's role). Without ``role``, the
        reserved role its ``acceptedResourceRoles`` names, if any — as DC/OS's Marathon, registered
        with role ``slave_public``, launched public apps on that role's reserved resources."""
        if self.role:
            return self.role
        reserved = [r for r in self.accepted_resource_roles or [] if r != UNRESERVED]
        return reserved[0] if reserved else UNRESERVED

    @property
    def accepted_roles(self) -> list[str]:
        """Resource roles the app's tasks may use; Marathon's default: unreserved (``*``) only."""
        return self.accepted_resource_roles or [UNRESERVED]

    @property
    def unreachable_waits(self) -> tuple[float, float]:
        """Seconds a task of an unreachable agent is waited for before it is replaced, and before
        it is expunged; forever when the strategy is ``disabled``."""
        strategy = self.unreachable_strategy
        if strategy == "disabled":
            return math.inf, math.inf
        return strategy.inactive_after_seconds, strategy.expunge_after_seconds

    @property
    def image(self) -> str | None:
        return self.container.docker.image if self.container and self.container.docker else None

    def port_labels(self) -> list[dict[str, str]]:
        """Labels of each port (definitions or mappings, whichever the network mode uses)."""
        if self.uses_port_mappings:
            return [m.labels for m in self.port_mappings]
        return [d.labels for d in self.port_definitions or []]

    def port_protocols(self) -> list[tuple[str, ...]]:
        """The protocols of each port (two for ``udp,tcp``)."""
        ports = self.port_mappings if self.uses_port_mappings else self.port_definitions or []
        return [protocols_of(port.protocol) for port in ports]

    def config_without_scaling(self) -> dict[str, Any]:
        """Everything that, when changed, needs the tasks replaced (not ``instances``)."""
        config = self.model_dump(by_alias=True, exclude={"instances", "version", "version_info"})
        # Absent and empty are one thing (port-mapping apps: Marathon renders [] for none, and a
        # PUT merged onto that rendering must not read as a new configuration).
        config["portDefinitions"] = config.get("portDefinitions") or []
        return config

    def to_marathon(self) -> dict[str, Any]:
        """The app as Marathon renders it: every default filled, camelCase keys."""
        out = self.model_dump(by_alias=True, exclude_none=True, exclude={"ports"})
        out.setdefault("cmd", None)
        out.setdefault("args", None)
        out.setdefault("user", None)
        out.setdefault("container", None)
        out.setdefault("acceptedResourceRoles", None)
        out.setdefault("ipAddress", None)
        out.setdefault("residency", None)
        out.setdefault("taskKillGracePeriodSeconds", None)
        if self.port_definitions is None:
            out["portDefinitions"] = []
        return out


def _path(loc: tuple[Any, ...]) -> str:
    """Pydantic's ``('healthChecks', 0, 'portIndex')`` → Marathon's ``/healthChecks(0)/portIndex``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"({part})"
        elif part in ("function-after", "function-before", "list[str]", "str", "dict[str,str]"):
            continue
        else:
            path += f"/{part}"
    return path or "/"


def _details_from(exc: ValidationError) -> list[dict[str, Any]]:
    grouped: dict[str, list[str]] = {}
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        message = "error.unknown.property" if error["type"] == "extra_forbidden" else error["msg"]
        grouped.setdefault(_path(loc), []).append(message)
    return [{"path": p, "errors": e} for p, e in grouped.items()]


def normalize_app_id(raw_id: Any, base: str = "/") -> str:
    """``nginx`` → ``/nginx``; ``shop/web/`` → ``/shop/web``. Raises AppInvalid on a bad path."""
    if not isinstance(raw_id, str) or not raw_id.strip("/"):
        raise AppInvalid([{"path": "/id", "errors": ["id must be a non-empty path like /shop/web"]}])
    full = raw_id if raw_id.startswith("/") else base.rstrip("/") + "/" + raw_id
    segments = [s for s in full.split("/") if s]
    bad = [s for s in segments if not PATH_SEGMENT.match(s)]
    if bad:
        raise AppInvalid([{"path": "/id", "errors": [
            f"path segment {bad[0]!r} must fully match regular expression '{PATH_SEGMENT.pattern}'"]}])
    return "/" + "/".join(segments)


def parse_app(raw: Any, app_id: str | None = None, images: ImageMap | None = None) -> AppDefinition:
    """Validates a posted app. ``app_id`` (from the URL) wins over the body's id. With ``images``
    (the cluster's image map), an app that names an image but no command must find it there."""
    if not isinstance(raw, dict):
        raise AppInvalid([{"path": "/", "errors": ["expected a JSON object"]}])
    body = {k: v for k, v in raw.items() if k not in READ_ONLY_FIELDS}
    body["id"] = normalize_app_id(app_id if app_id is not None else body.get("id"))
    try:
        app = AppDefinition.model_validate(body)
    except ValidationError as exc:
        raise AppInvalid(_details_from(exc)) from None
    details = _semantic_errors(app)
    if images is not None and app.cmd is None and app.args is None and app.image \
            and images.command_for(app.image) is None:
        details.append({"path": "/container/docker/image", "errors": [
            f"image {app.image!r} has no local runtime and no entry in the image map; give the app a cmd or args"]})
    if details:
        raise AppInvalid(details)
    return _with_defaults(app)


def _accepted_roles_error(app: AppDefinition) -> str | None:
    """Marathon 1.9's rule: an app accepts unreserved resources and those of its own role; this
    master runs one framework per role, so an app without ``role`` may name one reserved role."""
    accepted = app.accepted_resource_roles
    if accepted is None:
        return None
    if not accepted:
        return "must not be empty (leave it out to accept unreserved resources, '*')"
    for role in accepted:
        problem = role_problem(role)
        if problem:
            return problem
    reserved = sorted({r for r in accepted if r != UNRESERVED})
    if app.role is not None and any(r != app.role for r in reserved):
        return f"may only contain '*' and the app's role {app.role!r}, got {accepted}"
    if len(reserved) > 1:
        return f"may name at most one reserved role besides '*' (the role the app runs under), got {accepted}"
    return None


def _semantic_errors(app: AppDefinition) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []

    def add(path: str, message: str) -> None:
        errors.append({"path": path, "errors": [message]})

    if app.cmd is not None and app.args is not None:
        add("/", "AppDefinition must either contain one of 'cmd' or 'args', not both")
    if app.cmd is None and app.args is None and (app.container is None or app.container.docker is None):
        add("/", "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'.")
    if app.ports is not None and app.port_definitions is not None:
        add("/ports", "You cannot specify both ports and port definitions")
    problem = _accepted_roles_error(app)
    if problem:
        add("/acceptedResourceRoles", problem)
    inactive, expunge = app.unreachable_waits
    if expunge < inactive:
        add("/unreachableStrategy/expungeAfterSeconds",
            f"must be greater than or equal to inactiveAfterSeconds ({inactive:g})")
    for i, constraint in enumerate(app.constraints):
        message = _constraint_error(constraint)
        if message:
            add(f"/constraints({i})", message)
    if app.networks:
        if len(app.networks) > 1:
            add("/networks", "only one network is supported per app")
        for i, net in enumerate(app.networks):
            if net.mode == "container" and net.name is not None and not NETWORK_NAME.match(net.name):
                add(f"/networks({i})/name", f"{net.name!r} is not {NETWORK_NAME_RULE}")
    if app.ip_address and app.ip_address.network_name is not None and not NETWORK_NAME.match(app.ip_address.network_name):
        add("/ipAddress/networkName", f"{app.ip_address.network_name!r} is not {NETWORK_NAME_RULE}")
    if app.network_mode == "host" and app.port_mappings:
        add("/container/docker/portMappings", "portMappings need BRIDGE or USER networking; use portDefinitions with HOST")
    if app.uses_port_mappings and app.port_definitions:
        add("/portDefinitions", "portDefinitions are for HOST networking; use portMappings with BRIDGE or USER")
    if app.require_ports:
        defs = app.port_definitions or [PortDefinition(port=p) for p in app.ports or []]
        if any(d.port == 0 for d in defs):
            add("/requirePorts", "requirePorts needs every port definition to name a non-zero port")
    port_count = app.port_count if app.port_definitions is not None or app.uses_port_mappings else \
        len(app.ports) if app.ports is not None else 1
    for i, check in enumerate(app.health_checks):
        base = f"/healthChecks({i})"
        if check.protocol == "COMMAND":
            if check.command is None:
                add(f"{base}/command", "command health checks need a command")
            continue
        if check.port is not None and check.port_index is not None:
            add(f"{base}/port", "specify either port or portIndex, not both")
        index = check.port_index if check.port_index is not None else (0 if check.port is None else None)
        if index is not None and index >= port_count:
            add(f"{base}/portIndex",
                "Health check port indices must address an element of the ports array or container port mappings.")
        if check.path is not None and not check.path.startswith("/"):
            add(f"{base}/path", "path must start with /")
    return errors


def _constraint_error(constraint: list[str]) -> str | None:
    if len(constraint) not in (2, 3):
        return "Each constraint must be [field, operator] or [field, operator, value]"
    operator = constraint[1].upper()
    value = constraint[2] if len(constraint) == 3 else None
    if operator not in CONSTRAINT_OPERATORS:
        return f"Constraint operator must be one of {', '.join(CONSTRAINT_OPERATORS)}"
    if operator == "UNIQUE" and value is not None:
        return "Value specified but not used"
    if operator in ("CLUSTER", "IS", "LIKE", "UNLIKE") and value is None:
        return f"{operator} needs a value"
    if operator in ("LIKE", "UNLIKE"):
        try:
            re.compile(value or "")
        except re.error as exc:
            return f"'{value}' is not a valid regular expression: {exc}"
    if operator == "MAX_PER" and (value is None or not value.isdigit() or int(value) < 1):
        return "MAX_PER needs a positive integer value"
    if operator == "GROUP_BY" and value is not None and not value.isdigit():
        return "GROUP_BY value, if specified, must be a positive integer"
    return None


def _with_defaults(app: AppDefinition) -> AppDefinition:
    """Marathon's implicit ports: host networking gets one port definition unless told otherwise."""
    updates: dict[str, Any] = {}
    if not app.uses_port_mappings:
        if app.port_definitions is None:
            ports = app.ports if app.ports is not None else [0]
            updates["port_definitions"] = [PortDefinition(port=p) for p in ports]
        updates["ports"] = None
    else:
        if app.network_mode == "bridge":
            # BRIDGE: hostPort defaults to 0 (pick one); USER: no host port unless asked for.
            for mapping in app.port_mappings:
                if mapping.host_port is None:
                    mapping.host_port = 0
    for check in app.health_checks:
        if check.protocol in ("HTTP", "HTTPS", "MESOS_HTTP", "MESOS_HTTPS") and check.path is None:
            check.path = "/"
        if check.protocol != "COMMAND" and check.port is None and check.port_index is None:
            check.port_index = 0
    return app.model_copy(update=updates) if updates else app


def merge_update(current: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Marathon's partial PUT: top-level keys of ``patch`` replace the current ones."""
    if not isinstance(patch, dict):
        raise AppInvalid([{"path": "/", "errors": ["expected a JSON object"]}])
    merged = {k: v for k, v in current.items() if k not in READ_ONLY_FIELDS}
    merged.update({k: v for k, v in patch.items() if k not in READ_ONLY_FIELDS})
    # A patch switching to portDefinitions/ports must not collide with the other spelling.
    if "ports" in patch and "portDefinitions" not in patch:
        merged.pop("portDefinitions", None)
    if "portDefinitions" in patch and "ports" not in patch:
        merged.pop("ports", None)
    return merged


def marathon_task_name(app_id: str) -> str:
    """``/shop/web`` → ``web.shop`` (Mesos task name, as Marathon sets it)."""
    return ".".join(reversed([s for s in app_id.split("/") if s]))


def marathon_task_prefix(app_id: str) -> str:
    """``/shop/web`` → ``shop_web`` (before the ``.<uuid>`` of a task id)."""
    return "_".join(s for s in app_id.split("/") if s)
