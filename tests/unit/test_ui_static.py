"""The web UI's files as nginx serves them: Admin Router's configuration points / and /ui/ at
ui/public, every module the pages import is there (relative paths, or a bare name the import map
resolves to a vendored file), and the front-end stack is pinned exactly with its licences."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from adminrouter.config import UI_ROOT, Settings, render

PUBLIC = Path(UI_ROOT)
UI = PUBLIC.parent


def test_admin_router_serves_the_ui_files_open_and_keeps_the_apis_behind_auth() -> None:
    text = render(Settings(listen="198.18.0.2:80", run_dir="/run/ar", secret="s"), [])
    root = re.search(r"location = / \{(.*?)\n        \}", text, re.S)
    assert root and f"root {UI_ROOT};" in root.group(1) and "try_files /index.html" in root.group(1)
    assets = re.search(r"location /ui/ \{(.*?)\n        \}", text, re.S)
    assert assets and f"alias {UI_ROOT}/;" in assets.group(1) and "text/javascript js;" in assets.group(1)
    assert "auth_request" not in root.group(1) + assets.group(1)
    marathon = re.search(r"location /marathon/ \{(.*?)\n        \}", text, re.S)
    assert marathon and "auth_request /internal/auth;" in marathon.group(1)


def test_a_ui_root_nginx_cannot_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="ui root"):
        render(Settings(listen="0.0.0.0:80", run_dir="/run/ar", ui_root="/srv/ui; evil"), [])


def test_every_import_resolves_to_a_file_in_ui_public() -> None:
    index = (PUBLIC / "index.html").read_text()
    import_map = json.loads(re.search(r'<script type="importmap">(.*?)</script>', index, re.S).group(1))["imports"]
    for url in import_map.values():
        assert (PUBLIC / url.removeprefix("/ui/")).is_file(), url
    modules = sorted(PUBLIC.glob("*.js"))
    assert {m.name for m in modules} >= {"app.js", "api.js", "services.js", "cluster.js", "packages.js"}
    for module in modules:
        for name in re.findall(r'^import .*? from "([^"]+)";', module.read_text(), re.M):
            if name.startswith("./"):
                assert (PUBLIC / name).is_file(), f"{module.name} imports {name}"
            else:
                assert name in import_map, f"{module.name} imports {name}, which the import map does not name"


def test_the_stack_is_pinned_exactly_and_vendored_with_licences() -> None:
    package = json.loads((UI / "package.json").read_text())
    lock = json.loads((UI / "package-lock.json").read_text())
    for name, version in package["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} {version} is not an exact version"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
        assert (PUBLIC / "vendor" / f"LICENSE.{name}").is_file()
