"""The cluster view as the part of a Mesos ``/master/state`` that Mesos-DNS reads.

The agent has one source of cluster data, the view it long-polls from the master. Its Mesos-DNS
records come from that view through this adapter, so they follow Mesos-DNS's rules (the
generator in ``records`` is the one implementation of those) without a second fetch:

```
ClusterView ──state_of_view──► MesosState ──records.generate──► RecordSet
 agents           slaves (id, hostname, pid slave(1)@ip:port)
 frameworks       frameworks (name, hostname, pid scheduler@ip:port)
 tasks            tasks: state, the running status with container IPs, host ports, discovery ports
```

A task's discovery ports are its ports as Marathon declares them: the container port for
container-network tasks, else the host port; a ``udp,tcp`` port is one discovery port per
protocol; a port without a name is ``port<index>``.
"""

from __future__ import annotations

from typing import Any

from cluster.view import ClusterView, TaskInfo
from spartan_dns.records import MesosState, parse_state


def state_of_view(view: ClusterView) -> MesosState:
    """The Mesos state Mesos-DNS would read for ``view`` (pure). It goes through the same
    validation as a fetched ``/master/state``, so both paths meet one parser."""
    slaves = [{"id": a.agent_id, "hostname": a.hostname, "pid": f"slave(1)@{a.ip}:{a.port}"} for a in view.agents]
    # A framework on the v1 HTTP API listens nowhere (port 0): no pid, so no _framework._tcp SRV.
    frameworks = [{"name": f.name, "hostname": f.ip if not f.port else f.hostname,
                   **({"pid": f"scheduler-{f.framework_id}@{f.ip}:{f.port}"} if f.port else {}),
                   "tasks": [_task(t) for t in view.tasks if t.framework == f.name]} for f in view.frameworks]
    return parse_state({"leader": f"master@{view.master_ip}:{view.master_port}", "frameworks": frameworks,
                        "slaves": slaves})


def _task(task: TaskInfo) -> dict[str, Any]:
    status: dict[str, Any] = {"state": task.state, "timestamp": 1.0}
    if task.ip_addresses:
        status["container_status"] = {"network_infos": [{"ip_addresses": [{"ip_address": ip}
                                                                           for ip in task.ip_addresses]}]}
    discovery = []
    for index, port in enumerate(task.ports):
        number = port.container_port if task.network == "container" and port.container_port else port.host_port
        if number is None:
            continue
        discovery += [{"number": number, "protocol": protocol, "name": port.name or f"port{index}"}
                      for protocol in port.protocols]
    host_ports = [p.host_port for p in task.ports if p.host_port]
    return {"id": task.task_id, "name": task.name, "slave_id": task.agent_id, "state": task.state,
            "statuses": [status],
            "resources": {"ports": "[" + ", ".join(f"{port}-{port}" for port in host_ports) + "]"},
            "discovery": {"name": task.name, "ports": {"ports": discovery}}}
