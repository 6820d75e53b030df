"""The agent's image map: what to run for a Docker image when there is no container runtime.

An app that names an image but no ``cmd``/``args`` is run as the map says. The map is a JSON file
``{"images": {"<image or prefix*>": "<shell command>" | "@nginx"}}``; ``@nginx`` is the built-in
entry that serves a static page with nginx on the task's first port. The default map sends every
image to ``@nginx`` (the seed examples all run nginx images).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

NGINX = "@nginx"
DEFAULT_MAP = {"*": NGINX}


@dataclass
class ImageMap:
    entries: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MAP))

    @classmethod
    def load(cls, path: str | Path | None) -> ImageMap:
        if path is None:
            return cls()
        raw = json.loads(Path(path).read_text())
        images = raw.get("images") if isinstance(raw, dict) else None
        if not isinstance(images, dict) or not all(isinstance(v, str) for v in images.values()):
            raise ValueError(f"{path}: expected {{\"images\": {{\"<image>\": \"<command>\"}}}}")
        return cls(dict(images))

    def command_for(self, image: str) -> str | None:
        """The command for ``image`` (exact match first, then the longest matching pattern)."""
        if image in self.entries:
            return self.entries[image]
        patterns = sorted((p for p in self.entries if fnmatch.fnmatchcase(image, p)), key=len, reverse=True)
        return self.entries[patterns[0]] if patterns else None


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {sandbox}/nginx.pid;
error_log stderr;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {sandbox}/tmp;
    proxy_temp_path {sandbox}/tmp;
    fastcgi_temp_path {sandbox}/tmp;
    uwsgi_temp_path {sandbox}/tmp;
    scgi_temp_path {sandbox}/tmp;
    server {{
        listen {port};
        root {sandbox}/html;
        default_type text/html;
        location / {{ index index.html; }}
    }}
}}
"""


def prepare_nginx(sandbox: Path, port: int, task_id: str) -> str:
    """Writes an nginx config serving a page that names the task; returns the command."""
    (sandbox / "tmp").mkdir(exist_ok=True)
    (sandbox / "html").mkdir(exist_ok=True)
    (sandbox / "html" / "index.html").write_text(f"<html><body><h1>Welcome to nginx!</h1><p>{task_id}</p></body></html>\n")
    (sandbox / "nginx.conf").write_text(NGINX_CONF.format(sandbox=sandbox, port=port))
    return f"exec nginx -c {sandbox}/nginx.conf -e stderr"
