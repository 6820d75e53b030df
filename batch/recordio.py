"""Mesos RecordIO: ``<length in bytes>\\n<record>`` repeated, as the scheduler API streams events."""

from __future__ import annotations

import json
from typing import Any


class RecordIOError(ValueError):
    """The stream is not RecordIO (a length that is not a number, or a record that is not JSON)."""


class RecordReader:
    """Feed it bytes as they arrive; it hands back every complete record (JSON, decoded)."""

    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        self._buffer += chunk
        records: list[dict[str, Any]] = []
        while True:
            header, newline, rest = self._buffer.partition(b"\n")
            if not newline:
                if len(header) > 20:
                    raise RecordIOError(f"record length expected, got {header[:20]!r}")
                return records
            try:
                length = int(header)
            except ValueError:
                raise RecordIOError(f"record length expected, got {header[:20]!r}") from None
            if not 0 <= length <= self.MAX_LENGTH:
                raise RecordIOError(f"record length {length} out of range")
            if len(rest) < length:
                return records
            try:
                records.append(json.loads(rest[:length]))
            except ValueError as exc:
                raise RecordIOError(f"record is not JSON: {exc}") from None
            self._buffer = rest[length:]
