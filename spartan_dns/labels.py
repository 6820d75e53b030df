"""DNS label rules as Mesos-DNS applies them (RFC 1123 by default, RFC 952 on request).

A *label* is one dot-free piece of a DNS name. Mesos-DNS turns arbitrary task and framework
names into labels in two steps:

1. map every character: ASCII letters are lower-cased, digits stay, ``-``, ``.`` and ``_`` become
   ``-``, anything else (spaces, ``$``, non-ASCII…) is dropped;
2. trim and cut: strip the *left cut-set* from the front (``-`` for RFC 1123; ``-`` and digits for
   RFC 952, whose labels must start with a letter), keep at most ``maxlen`` characters (63 / 24),
   strip trailing ``-`` — and, if that made the label shorter, refill it from what came after the
   cut (with its leading ``-`` skipped), so ``hello`` + 58 dashes + ``f`` becomes ``hellof``.

The refill step is Mesos-DNS's, reproduced as is: it can leave a trailing ``-`` when the refill
itself ends in one (``a`` + 62 dashes + ``b-`` → ``ab-``). Names must match Mesos-DNS's byte for
byte, so this module does not "fix" that.

A *domain fragment* (framework names, host names) keeps its dots: each dot-separated part is made
a label on its own and empty results are dropped (``marathon-0.6.0-dev`` → ``marathon-0.dev``
under RFC 952, because ``6`` and ``0-dev`` lose their leading digits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

LabelSpec = Literal["rfc1123", "rfc952"]
LabelFunc = Callable[[str], str]

RFC1123_MAX_LENGTH = 63
RFC952_MAX_LENGTH = 24

_HYPHENATED = frozenset("-._")
_KEPT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _map_characters(name: str) -> str:
    out: list[str] = []
    for char in name:
        if char in _KEPT:
            out.append(char)
        elif char in _UPPER:
            out.append(char.lower())
        elif char in _HYPHENATED:
            out.append("-")
        # every other character (including non-ASCII) is dropped, as Mesos-DNS does
    return "".join(out)


def _trim_cut(label: str, maxlen: int, left_cutset: str) -> str:
    trimmed = label.lstrip(left_cutset)
    size = min(len(trimmed), maxlen)
    head = trimmed[:size].rstrip("-")
    if len(head) == size:
        return head
    # Trailing dashes were removed from the cut: refill from past the cut, skipping its dashes.
    refill = trimmed[size:].lstrip("-")
    return head + refill[: size - len(head)]


def rfc1123_label(name: str) -> str:
    """``name`` as an RFC 1123 label: ``[a-z0-9-]``, at most 63 chars, no leading ``-``."""
    return _trim_cut(_map_characters(name), RFC1123_MAX_LENGTH, "-")


def rfc952_label(name: str) -> str:
    """``name`` as an RFC 952 label: like RFC 1123 but 24 chars and starting with a letter."""
    return _trim_cut(_map_characters(name), RFC952_MAX_LENGTH, "-0123456789")


def domain_fragment(name: str, label: LabelFunc) -> str:
    """Make each dot-separated part of ``name`` a label; drop parts that come out empty."""
    return ".".join(part for part in map(label, name.split(".")) if part)


def label_function(spec: str) -> LabelFunc:
    """The label function for ``spec`` (``rfc1123`` or ``rfc952``, any case).

    Raises ValueError naming the accepted values for anything else.
    """
    normalised = spec.strip().lower()
    if normalised == "rfc1123":
        return rfc1123_label
    if normalised == "rfc952":
        return rfc952_label
    raise ValueError(f"label_spec: expected 'rfc1123' or 'rfc952', got {spec!r}")
