"""Field offsets of the running kernel's structs, read from its BTF (``/sys/kernel/btf/vmlinux``).

The tracepoint programs (``trace_outcomes.c``) read two fields of ``struct sock`` through the raw
pointer the tracepoint passes. bcc compiles against whatever kernel headers are installed, which
need not match the running kernel (here: 6.1 headers, a 6.18 kernel), so the offsets come from
the kernel's own type information instead and are passed to the compiler as ``-D`` constants.

Only what that needs: walk the type section once, index structs and unions by name, resolve a
member path (descending into anonymous members) to a byte offset.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
_MAGIC = 0xEB9F
_STRUCT, _UNION = 4, 5
# Bytes that follow the 12-byte common header, per kind: a fixed part and a part per vlen item.
_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0),
          15: (0, 12), 17: (4, 0), 19: (0, 12)}


class BtfError(Exception):
    """The kernel's BTF is missing, malformed, or lacks the struct or member asked for."""


class Btf:
    def __init__(self, data: bytes) -> None:
        magic, _version, _flags, hdr_len = struct.unpack_from("=HBBI", data, 0)
        if magic != _MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x})")
        type_off, type_len, str_off, _str_len = struct.unpack_from("=IIII", data, 8)
        self._strings = data[hdr_len + str_off:]
        # type id -> (name, kind, members [(name, type id, bit offset)]) for structs and unions;
        # every other type only as (name, kind, []) so anonymous members can be resolved.
        self.types: list[tuple[str, int, list[tuple[str, int, int]]]] = [("", 0, [])]
        self.by_name: dict[str, int] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, _size = struct.unpack_from("=III", data, pos)
            kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            pos += 12
            fixed, per_item = _EXTRA.get(kind, (0, 0))
            members = []
            if kind in (_STRUCT, _UNION):
                for n in range(vlen):
                    m_name, m_type, m_offset = struct.unpack_from("=III", data, pos + 12 * n)
                    members.append((self._name(m_name), m_type, m_offset & 0xFFFFFF if kind_flag else m_offset))
                name = self._name(name_off)
                if name and name not in self.by_name:
                    self.by_name[name] = len(self.types)
            self.types.append((self._name(name_off), kind, members))
            pos += fixed + per_item * vlen

    def _name(self, offset: int) -> str:
        return self._strings[offset:self._strings.index(b"\0", offset)].decode()

    def _find(self, type_id: int, member: str) -> int | None:
        """Bit offset of ``member`` in the struct/union ``type_id``, looking into anonymous members."""
        for name, m_type, bits in self.types[type_id][2]:
            if name == member:
                return bits
            if not name and self.types[m_type][1] in (_STRUCT, _UNION):
                inner = self._find(m_type, member)
                if inner is not None:
                    return bits + inner
        return None

    def offset(self, struct_name: str, member: str) -> int:
        """Byte offset of ``member`` in ``struct struct_name`` (found inside anonymous members too)."""
        type_id = self.by_name.get(struct_name)
        if type_id is None:
            raise BtfError(f"struct {struct_name} is not in the kernel's BTF")
        bits = self._find(type_id, member)
        if bits is None:
            raise BtfError(f"struct {struct_name} has no member {member}")
        if bits % 8:
            raise BtfError(f"{struct_name}.{member} is a bit field")
        return bits // 8


@functools.cache
def kernel_btf(path: Path | None = None) -> Btf:
    path = path or VMLINUX
    try:
        return Btf(path.read_bytes())
    except OSError as exc:
        raise BtfError(f"cannot read the kernel's BTF at {path} ({exc.strerror})") from exc


def sock_offsets() -> dict[str, int]:
    """Where ``struct sock`` keeps the TCP state and the socket cookie, in this kernel."""
    btf = kernel_btf(VMLINUX)
    common = btf.offset("sock", "__sk_common")
    return {"NAVSTAR_SK_STATE_OFFSET": common + btf.offset("sock_common", "skc_state"),
            "NAVSTAR_SK_COOKIE_OFFSET": common + btf.offset("sock_common", "skc_cookie")}
