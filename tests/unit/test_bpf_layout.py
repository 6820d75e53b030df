"""The ctypes mirror in bpf/maps.py agrees with bpf/lib/layout.h, field by field.

Every size and offset the mirror claims becomes a ``_Static_assert`` compiled against the
header with clang for the BPF target (the ABI the programs use), so a drifted field fails the
build with the struct and field named.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from bpf import maps

LIB = Path(maps.__file__).resolve().parent / "lib"
CLANG = shutil.which("clang")


def static_asserts(structs, slots: int) -> str:
    lines = ["#include <stddef.h>", f"#define NAVSTAR_LB_CHUNK_SLOTS {slots}", '#include "layout.h"']
    for struct in structs:
        c_type = f"struct {struct.C_NAME}"
        lines.append(f'_Static_assert(sizeof({c_type}) == {ctypes.sizeof(struct)}, '
                     f'"sizeof({c_type}) != {ctypes.sizeof(struct)}");')
        for name, _ctype in struct._fields_:
            offset = getattr(struct, name).offset
            size = getattr(struct, name).size
            lines.append(f'_Static_assert(offsetof({c_type}, {name}) == {offset}, '
                         f'"offsetof({c_type}, {name}) != {offset}");')
            lines.append(f'_Static_assert(sizeof((({c_type} *)0)->{name}) == {size}, '
                         f'"sizeof({c_type}.{name}) != {size}");')
    return "\n".join(lines) + "\n"


def compile_against_header(source: str) -> subprocess.CompletedProcess:
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return subprocess.run(
        [CLANG, "-target", "bpf", "-fsyntax-only", "-I", str(LIB), "-I", f"/usr/include/{multiarch}",
         "-x", "c", "-"],
        input=source, capture_output=True, text=True, timeout=60)


needs_clang = pytest.mark.skipif(CLANG is None, reason="clang is installed by scripts/setup.sh")


@needs_clang
@pytest.mark.parametrize("slots", [maps.DEFAULT_CHUNK_SLOTS, 251])
def test_mirror_matches_header(slots):
    structs = [s for s in maps.STRUCTS if s.C_NAME != "lb4_maglev"] + [maps.maglev_type(slots)]
    result = compile_against_header(static_asserts(structs, slots))
    assert result.returncode == 0, result.stderr


@needs_clang
def test_a_drifted_mirror_is_caught():
    class Drifted(ctypes.Structure):
        C_NAME = "lb4_backend"
        _fields_ = [("address", ctypes.c_uint32), ("port", ctypes.c_uint32), ("flags", ctypes.c_uint8)]

    result = compile_against_header(static_asserts([Drifted], maps.DEFAULT_CHUNK_SLOTS))
    assert result.returncode != 0
    assert "offsetof(struct lb4_backend, flags) != 8" in result.stderr


def test_a_table_chunk_fits_one_page_with_the_hash_element_header():
    # layout.h promises this: the kernel's htab element header is 48 bytes, then the 8-byte key.
    assert 48 + ctypes.sizeof(maps.Lb4MaglevKey) + ctypes.sizeof(maps.Lb4Maglev) <= 4096


def c_name(ctype) -> str:
    if hasattr(ctype, "C_NAME"):
        return f"struct {ctype.C_NAME}"
    return {ctypes.c_uint32: "__u32", ctypes.c_uint64: "__u64", ctypes.c_int: "int"}[ctype]


def test_map_specs_mirror_the_map_declarations():
    declared = re.findall(r'BPF_TABLE_PINNED\("(\w+)",\s*([^,]+?),\s*([^,]+?),\s*(\w+),',
                          (LIB / "maps.h").read_text())
    assert declared, "no BPF_TABLE_PINNED in maps.h"
    specs = maps.map_specs()
    assert {name for *_types, name in declared} == set(specs)
    for kind, key, value, name in declared:
        spec = specs[name]
        assert (c_name(spec.key), c_name(spec.value)) == (key, value), name
        assert kind.replace("_", "") in {1: "hash", 2: "array", 6: "percpuarray", 9: "lruhash"}[spec.map_type]


def test_map_specs_follow_the_sizes():
    specs = maps.map_specs(chunk_slots=251, max_chunks=10)
    assert ctypes.sizeof(specs["nv_maglev"].value) == 251 * 2
    assert specs["nv_maglev"].max_entries == 10
    assert specs["nv_conns"].percpu and not specs["nv_services"].percpu


def test_features_refuse_sizes_the_programs_cannot_use():
    from bpf.loader import Features

    with pytest.raises(ValueError, match="power of two"):
        Features(peer_slots=1000)
    with pytest.raises(ValueError, match="outcomes needs count_connections"):
        Features(count_connections=False)
    assert not Features(count_connections=False, outcomes=False).outcomes
    assert "-DNAVSTAR_PEER_SLOTS=1024" in Features(peer_slots=1024).cflags(Path("/sys/fs/bpf/x"))


def test_ebpf_struct_formats_match_the_mirror():
    from minuteman import ebpf

    for fmt, struct_type in ((ebpf.SERVICE, maps.Lb4Service), (ebpf.BACKEND_KEY, maps.Lb4BackendKey),
                             (ebpf.BACKEND, maps.Lb4Backend), (ebpf.MAGLEV_KEY, maps.Lb4MaglevKey)):
        assert fmt.size == ctypes.sizeof(struct_type)
        values = tuple(range(1, len(struct_type._fields_) + 1))
        assert fmt.pack(*values) == bytes(struct_type(*values))


def test_byte_order_helpers_round_trip():
    assert maps.from_be32(maps.be32("11.0.0.3")) == "11.0.0.3"
    assert bytes(ctypes.c_uint32(maps.be32("11.0.0.3"))) == bytes([11, 0, 0, 3])
    assert bytes(ctypes.c_uint16(maps.be16(8080))) == (8080).to_bytes(2, "big")
    assert maps.from_be16(maps.be16(53)) == 53
