"""Admin Router's nginx configuration, rendered from ``nginx.conf.template`` (pure).

``render(settings, services)`` fills the template: where nginx listens, its run directory, the
upstreams (Marathon, Mesos, the backend on loopback) and one upstream + location per
``/service/<name>/`` route. The cluster secret goes into the rendered file (upstream
``Authorization``), so the supervisor writes it mode 0600.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from string import Template

from adminrouter.routes import ServiceRoute

TEMPLATE = Path(__file__).with_name("nginx.conf.template")

# The web UI's static files (served at / and /ui/; see ui/README.md).
UI_ROOT = str(Path(__file__).resolve().parent.parent / "ui" / "public")


COMMON_HEADERS = (
    'proxy_set_header Connection "";',
    "proxy_set_header Host $host;",
    "proxy_set_header X-Real-IP $remote_addr;",
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    "proxy_set_header X-Forwarded-Proto $scheme;",
)


def _headers(indent: int) -> str:
    return "\n".join(" " * indent + line for line in COMMON_HEADERS)


@dataclass(frozen=True)
class Settings:
    listen: str                  # "198.18.0.2:80"
    run_dir: str                 # pid, logs, temp files, the auth cache
    backend: str = "127.0.0.1:8101"
    marathon: str = "127.0.0.1:8080"
    mesos: str = "127.0.0.1:5050"
    cosmos: str = "127.0.0.1:7070"     # the package service (navstar cosmos)
    prometheus: str = "127.0.0.1:9090"   # the lab's Prometheus, when it runs (else a JSON 503)
    secret: str = ""             # the cluster secret upstreams expect ('' = none)
    workers: str = "auto"
    user: str = "www-data"
    ui_root: str = UI_ROOT       # the web UI's files (nginx's workers read them as `user`)


def _upstream_name(name: str) -> str:
    return "service_" + hashlib.sha1(name.encode()).hexdigest()[:12]


def _check(value: str, what: str) -> str:
    if any(c in value for c in "'\";{}\n\\$ "):
        raise ValueError(f"{what}: {value!r} cannot go into nginx's configuration")
    return value


def render(settings: Settings, services: list[ServiceRoute]) -> str:
    upstreams, locations = [], []
    any_down = False
    for route in services:
        name = _check(route.name, "service name")
        if route.servers:
            upstream = _upstream_name(name)
            servers = "".join(f" server {_check(s, 'server')} max_fails=0;" for s in route.servers)
            upstreams.append(f"    upstream {upstream} {{{servers} keepalive 8; keepalive_timeout 4s; }}")
            proxy = f"proxy_pass {route.scheme}://{upstream}/;"
        else:
            # After auth_request, as /service/ in the template: try_files, not return.
            proxy = (f"set $service_down \"service {name} ({_check(route.app_id, 'app id')}) has no running task\";\n"
                     "            try_files /.navstar-no-such-file @service_down;")
            any_down = True
        locations.append(f"        location /service/{name}/ {{\n            auth_request /internal/auth;\n"
                         f"            {proxy}\n        }}")
    if any_down:
        locations.append("        location @service_down {\n            add_header Retry-After 1 always;\n"
                         "            return 503 '{\"title\":\"Service Unavailable\",\"description\":\"$service_down\","
                         "\"code\":\"ERR_SERVICE_UNAVAILABLE\"}\\n';\n        }")
    return Template(TEMPLATE.read_text()).substitute(
        workers=settings.workers, run_dir=_check(settings.run_dir, "run directory"), user=settings.user,
        listen=_check(settings.listen, "listen"), backend=_check(settings.backend, "backend"),
        marathon=_check(settings.marathon, "marathon"), mesos=_check(settings.mesos, "mesos"),
        cosmos=_check(settings.cosmos, "cosmos"),
        prometheus=_check(settings.prometheus, "prometheus"),
        secret=_check(settings.secret, "secret"), ui_root=_check(settings.ui_root, "ui root"),
        common=_headers(4), common_location=_headers(12), common_nested=_headers(16),
        service_upstreams="\n".join(upstreams) + ("\n" if upstreams else ""),
        service_locations="\n".join(locations) + ("\n" if locations else ""),
    )
