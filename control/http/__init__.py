"""The master's HTTP faces: thin Starlette apps over the ``Master`` domain object.

``master_apps(master)`` builds both ports as the composition root serves them: the Marathon
REST API (``marathon.py``, default :8080) and the Mesos port (``mesos.py``, default :5050), each
behind the token check (``auth.py``), sharing one metrics registry (``metrics.py``). Handlers
parse and render; the rules they trigger live in ``control.master`` and what it drives.
"""

from __future__ import annotations

from typing import NamedTuple

from starlette.applications import Starlette

from control.http.marathon import marathon_app
from control.http.mesos import mesos_app
from control.master import Master
from control.master_metrics import MasterMetrics


class MasterApps(NamedTuple):
    marathon: Starlette
    mesos: Starlette


def master_apps(master: Master) -> MasterApps:
    """Both of the master's ports; call once per master (the metrics observe its scheduler)."""
    metrics = MasterMetrics(master)
    return MasterApps(marathon_app(master, metrics), mesos_app(master, metrics))
