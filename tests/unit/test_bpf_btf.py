"""bpf/btf.py finds struct member offsets in BTF: a hand-built blob (anonymous members, bit-field
encoding) and the running kernel's own, which the tracepoint programs are compiled with."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bpf import btf
from bpf.loader import Features, LoaderError


def blob() -> bytes:
    strings = b"\0int\0outer\0x\0a\0b\0y\0z\0flags\0"
    name = {s.decode(): strings.index(b"\0" + s + b"\0") + 1 for s in strings.strip(b"\0").split(b"\0")}

    def typ(name_off: int, kind: int, vlen: int, size: int, kind_flag: int = 0) -> bytes:
        return struct.pack("=III", name_off, kind_flag << 31 | kind << 24 | vlen, size)

    def member(name_off: int, type_id: int, offset: int) -> bytes:
        return struct.pack("=III", name_off, type_id, offset)

    types = b"".join([
        typ(name["int"], 1, 0, 4) + struct.pack("=I", 32),                       # 1: int
        typ(0, 5, 2, 4) + member(name["a"], 1, 0) + member(name["b"], 1, 0),      # 2: anonymous union
        typ(name["outer"], 4, 5, 16, kind_flag=1)                                 # 3: struct outer
        + member(name["x"], 1, 0) + member(0, 2, 32) + member(name["y"], 1, 64)
        + member(name["z"], 1, 96) + member(name["flags"], 1, 4 << 24 | 100),     # a 4-bit field
    ])
    header = struct.pack("=HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_offsets_through_anonymous_members_and_bit_field_encoding():
    parsed = btf.Btf(blob())
    assert [parsed.offset("outer", m) for m in ("x", "a", "b", "y", "z")] == [0, 4, 4, 8, 12]
    with pytest.raises(btf.BtfError, match="bit field"):
        parsed.offset("outer", "flags")
    with pytest.raises(btf.BtfError, match="no member nope"):
        parsed.offset("outer", "nope")
    with pytest.raises(btf.BtfError, match="struct inner"):
        parsed.offset("inner", "x")
    with pytest.raises(btf.BtfError, match="not BTF"):
        btf.Btf(b"\0" * 24)


@pytest.mark.skipif(not btf.VMLINUX.exists(), reason="the kernel exposes no BTF")
def test_the_running_kernels_sock_fields():
    offsets = btf.sock_offsets()
    kernel = btf.kernel_btf()
    # struct sock starts with its sock_common; the state byte follows the u16 family.
    assert kernel.offset("sock", "__sk_common") == 0
    assert offsets["NAVSTAR_SK_STATE_OFFSET"] == kernel.offset("sock_common", "skc_family") + 2
    assert offsets["NAVSTAR_SK_COOKIE_OFFSET"] % 8 == 0


def test_without_btf_outcomes_are_refused_by_name_and_the_rest_still_builds(monkeypatch, tmp_path):
    monkeypatch.setattr(btf, "VMLINUX", tmp_path / "vmlinux")
    with pytest.raises(LoaderError, match="Features.outcomes.*kernel's BTF"):
        Features().cflags(Path("/sys/fs/bpf/x"))
    assert not any("SK_" in flag for flag in Features(outcomes=False).cflags(Path("/sys/fs/bpf/x")))
