"""``navstar dns …``: look at what the resolver serves (mounted by ``navstar/cli.py``)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

dns_app = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="The node resolver: Mesos-DNS records and queries.")

_err = Console(stderr=True, soft_wrap=True)

# generate()'s ValueErrors start with the parameter's name; the user typed the option.
_OPTION_FOR_PARAMETER = {"domain": "--domain", "ip_sources": "--ip-sources", "label_spec": "--label-spec",
                         "listener": "--listener"}


class LabelSpecChoice(StrEnum):
    rfc1123 = "rfc1123"
    rfc952 = "rfc952"


def _fail(message: str) -> typer.Exit:
    _err.print(f"[red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(2)


def _load_state(path: str) -> Any:
    """The decoded JSON of ``path`` (``-`` = stdin); exits 2 with the reason when it cannot."""
    source = "stdin" if path == "-" else path
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read --mesos-state {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _fail(f"--mesos-state {source} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise _fail(f"--mesos-state {source} is not valid JSON: {exc.msg} at line {exc.lineno} "
                    f"column {exc.colno}") from None
    except RecursionError:
        raise _fail(f"--mesos-state {source} is nested too deeply to be a Mesos state") from None


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@dns_app.command("records")
def records(
    mesos_state: Annotated[str, typer.Option("--mesos-state", metavar="FILE",
                                             help="a Mesos /master/state JSON document ('-' reads stdin)")],
    domain: Annotated[str, typer.Option(help="the Mesos-DNS domain")] = "mesos",
    ip_sources: Annotated[str, typer.Option(
        help="where task IPs come from, first source with an IP wins: netinfo, mesos, host, docker")
    ] = "netinfo,mesos,host",
    label_spec: Annotated[LabelSpecChoice, typer.Option(case_sensitive=False,
                                                        help="DNS label rules for task/framework names")
                          ] = LabelSpecChoice.rfc1123,
    masters: Annotated[str, typer.Option(help="every master's ip:port, comma-separated (masterN records)")] = "",
    listener: Annotated[str | None, typer.Option(help="this resolver's IP: gives the SOA mname an address")] = None,
    ns: Annotated[str | None, typer.Option(help="SOA mname (default ns1.<domain>.)")] = None,
    resolve_hostnames: Annotated[bool, typer.Option(
        "--resolve-hostnames", help="resolve non-IP agent/framework hosts with the system resolver, as Mesos-DNS does")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Print the records Mesos-DNS would serve for a Mesos state document."""
    from spartan_dns.records import MesosStateError, generate, resolve_with_system

    state = _load_state(mesos_state)
    source = "stdin" if mesos_state == "-" else mesos_state
    try:
        recordset = generate(state, domain, ip_sources, label_spec.value, masters=_split_list(masters),
                             ns=ns, listener=listener,
                             resolve_hostname=resolve_with_system if resolve_hostnames else None)
    except MesosStateError as exc:
        raise _fail(f"--mesos-state {source} is not a Mesos state: {exc}") from None
    except ValueError as exc:
        parameter, _, reason = str(exc).partition(": ")
        raise _fail(f"{_OPTION_FOR_PARAMETER.get(parameter, parameter)}: {reason}") from None

    for warning in recordset.warnings:
        _err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(recordset.to_json(), indent=2) + "\n")
        return
    table = Table(title=f"{len(recordset)} records in {recordset.domain}.")
    for column in ("name", "type", "value"):
        table.add_column(column, overflow="fold")
    for record in recordset:
        table.add_row(record.name, record.rtype, record.value)
    Console().print(table)


@dns_app.command("query")
def query(
    name: Annotated[str, typer.Argument(help="the name to look up")],
    qtype: Annotated[str, typer.Argument(metavar="[TYPE]", help="A, AAAA, SRV, SOA, NS, TXT, …")] = "A",
    server: Annotated[str, typer.Option(help="resolver to ask")] = "198.51.100.1",
    port: Annotated[int, typer.Option(help="its port")] = 53,
    tcp: Annotated[bool, typer.Option("--tcp", help="ask over TCP")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer")] = 3.0,
) -> None:
    """Ask a resolver and print the answer like `dig +short` (the rcode on failure, exit 1)."""
    from dnslib import QTYPE, RCODE, DNSError, DNSRecord

    kind = qtype.upper()
    if kind not in QTYPE.reverse:
        raise _fail(f"TYPE: unknown record type {qtype!r}")
    try:
        request = DNSRecord.question(name, kind)
    except DNSError as exc:
        raise _fail(f"NAME: {name!r} is not a DNS name ({exc})") from None
    try:
        wire = request.send(server, port, tcp=tcp, timeout=timeout, ipv6=":" in server)
        reply = DNSRecord.parse(wire)
        if reply.header.tc and not tcp:
            reply = DNSRecord.parse(request.send(server, port, tcp=True, timeout=timeout, ipv6=":" in server))
    except TimeoutError:
        _err.print(f"no answer from {server} port {port} within {timeout:g}s")
        raise typer.Exit(1) from None
    except (OSError, DNSError) as exc:
        _err.print(f"cannot query {server} port {port}: {exc}")
        raise typer.Exit(1) from None
    if reply.header.rcode != RCODE.NOERROR:
        _err.print(RCODE.get(reply.header.rcode, str(reply.header.rcode)))
        raise typer.Exit(1)
    for rr in reply.rr:
        print(rr.rdata.toZone())
