"""The Mesos-DNS HTTP API's answers, as pure functions over a RecordSet (the server mounts them).

Shapes and quirks follow Mesos-DNS's ``resolver.go`` so its clients keep working:

- ``GET /v1/hosts/{host}``       → ``hosts(rs, host)``       ``[{"host", "ip"}]`` — A records only
- ``GET /v1/services/{service}`` → ``services(rs, service)`` ``[{"service", "host", "ip", "port"}]``
  (``ip`` is the target's first A record or ``""``, ``port`` a string)
- ``GET /v1/records``            → ``records_json(rs)``      ``[{"name", "host", "rtype"}]``, every
  record, SRV ``host`` being ``target:port`` (Mesos-DNS's enumerate record, as dcos-net served it)

Names are matched case-insensitively with or without the trailing dot, and ``.*`` wildcards are
stripped as Mesos-DNS does. A lookup with no records answers one all-empty entry (Mesos-DNS's
shape: clients index ``[0]``), never an error.
"""

from __future__ import annotations

from spartan_dns.records import RecordSet, normalise_name


def _clean(name: str) -> str:
    return normalise_name(name.replace(".*", ""))


def hosts(recordset: RecordSet, host: str) -> list[dict[str, str]]:
    """A records of ``host``: ``[{"host": "<name>.", "ip": "<ip>"}]``."""
    name = _clean(host)
    found = [{"host": name, "ip": record.value} for record in recordset.by_name(name, "A")]
    return found or [{"host": "", "ip": ""}]


def services(recordset: RecordSet, service: str) -> list[dict[str, str]]:
    """SRV records of ``service`` with each target's first A record."""
    found = []
    for record in recordset.by_name(_clean(service), "SRV"):
        target, port = record.srv()
        addresses = recordset.by_name(target, "A")
        found.append({"service": service, "host": target, "ip": addresses[0].value if addresses else "",
                      "port": str(port)})
    return found or [{"service": "", "host": "", "ip": "", "port": ""}]


def records_json(recordset: RecordSet) -> list[dict[str, str]]:
    """Every record as ``{"name", "host", "rtype"}``."""
    return [{"name": record.name, "host": record.value, "rtype": record.rtype} for record in recordset]
