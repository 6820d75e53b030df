#!/usr/bin/env bash
# The real DC/OS CLI (dcoscli 0.6.1) in its own virtual environment, .venv-dcos/, for the
# end-to-end tests against Admin Router. Not a runtime dependency of navstar. Idempotent: a
# second run finds .venv-dcos/bin/dcos working and returns at once.
#
# dcoscli and dcos 0.6.1 pin cryptography==2.0.2, which does not build on Python 3.11, so both
# go in with --no-deps, their dependencies at versions that do; the names Python 3.10 removed
# from `collections` (Mapping, MutableMapping, ...) are put back at start-up by a .pth hook
# (Debian's own sitecustomize.py in the standard library would shadow one in site-packages).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-dcos
STAMP="$VENV/.installed-0.6.1"
say() { printf 'setup-dcos-cli: %s\n' "$*"; }

if [ -f "$STAMP" ] && "$VENV/bin/dcos" --version >/dev/null 2>&1; then
  exit 0
fi
say "installing dcoscli 0.6.1 into $VENV"
[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --cache-dir "$VENV/.pip-cache")
"${PIP[@]}" --no-deps dcoscli==0.6.1 dcos==0.6.1
"${PIP[@]}" cryptography requests toml six pygments docopt pkginfo 'virtualenv<16' \
  'jsonschema<3' pager 'prettytable<1' PyJWT==1.4.2 sseclient==0.0.19 retrying==1.3.3
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat > "$site/dcos_collections_compat.py" <<'PY'
"""dcoscli 0.6.1 predates Python 3.10: give `collections` back the ABC names it uses."""
import collections
import collections.abc

for _name in ("Mapping", "MutableMapping", "Sequence", "MutableSequence", "Set", "MutableSet",
              "Iterable", "Iterator", "Callable", "Hashable", "Sized", "Container"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))
PY
echo "import dcos_collections_compat" > "$site/dcos_collections_compat.pth"
rm -f "$site/sitecustomize.py"
"$VENV/bin/dcos" --version >/dev/null
touch "$STAMP"
say "ready: $VENV/bin/dcos"
