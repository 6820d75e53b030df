"""The overlay's NAT seam in memory, for tests, with a record of every call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from overlay.netfilter import NatRules, NetfilterError


@dataclass(frozen=True)
class Call:
    method: str
    args: tuple[Any, ...]


class FakeNetfilter:
    """``rules`` is what the kernel would hold (tests set it to stage drift); ``calls`` records
    every call in order, whatever its outcome; with ``fail`` every ``apply`` raises."""

    def __init__(self) -> None:
        self.rules: NatRules | None = None
        self.fail = False
        self.calls: list[Call] = []

    @property
    def applies(self) -> int:
        return sum(1 for call in self.calls if call.method == "apply")

    def current(self) -> NatRules | None:
        self.calls.append(Call("current", ()))
        return self.rules

    def apply(self, rules: NatRules) -> None:
        self.calls.append(Call("apply", (rules,)))
        if self.fail:
            raise NetfilterError("injected failure")
        self.rules = rules

    def remove(self) -> None:
        self.calls.append(Call("remove", ()))
        self.rules = None
