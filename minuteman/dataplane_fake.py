"""An in-memory dataplane for tests of the code above the seam (reconciler, layered dataplane).

It records every call in ``calls`` as (method, args), so a test asserts on what the code under test
asked for. It decides nothing by comparing tables: ``apply`` takes the table it is given as the new
kernel state, whether or not anything changed.
"""

from __future__ import annotations

from typing import cast

from minuteman.dataplane import ApplyResult, Backend, VipEntry, VipKey

Call = tuple[str, tuple[object, ...]]


class FakeDataplane:
    """``fail``: VIPs whose apply fails (the kernel keeps what it held for them);
    ``counts``: what ``connection_counts`` reports."""

    name = "fake"

    def __init__(self) -> None:
        self.table: dict[VipKey, VipEntry] = {}
        self.fail: set[VipKey] = set()
        self.counts: dict[tuple[VipKey, Backend], int] = {}
        self.calls: list[Call] = []

    def applied(self) -> list[dict[VipKey, VipEntry]]:
        """The tables handed to ``apply``, oldest first."""
        return [cast(dict[VipKey, VipEntry], args[0]) for method, args in self.calls if method == "apply"]

    def apply(self, table: dict[VipKey, VipEntry]) -> ApplyResult:
        self.calls.append(("apply", (dict(table),)))
        failed = {key for key in table if key in self.fail}
        result = ApplyResult(programmed=set(table) - failed, removed=set(self.table) - set(table),
                             errors={key: "injected failure" for key in failed})
        kept = {key: self.table[key] for key in failed if key in self.table}
        self.table = {key: entry for key, entry in table.items() if key not in failed} | kept
        return result

    def current(self) -> dict[VipKey, VipEntry]:
        self.calls.append(("current", ()))
        return dict(self.table)

    def connection_counts(self) -> dict[tuple[VipKey, Backend], int]:
        self.calls.append(("connection_counts", ()))
        return dict(self.counts)

    def close(self, keep_kernel_state: bool = True) -> None:
        self.calls.append(("close", (keep_kernel_state,)))
        if not keep_kernel_state:
            self.table.clear()
