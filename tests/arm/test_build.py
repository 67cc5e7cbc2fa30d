"""The documented cross builds produce binaries of the right architecture, statically linked for the boards; the
32-bit build keeps NEON to its kernel files, so it runs on cores without it."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.arm.conftest import run

EXPECTED = {"aarch64": "ARM aarch64", "armv7": "ARM, EABI5"}


@pytest.mark.parametrize("target", ["aarch64", "armv7"])
def test_cross_build_architecture(target, request):
    build = request.getfixturevalue(f"{target}_build")
    if shutil.which("file") is None:
        pytest.skip("`file` not installed (apt-get install file)")
    for name in ("libqrt.so", "qrun-native", "kernel-check"):
        out = run(["file", "-b", build / name]).stdout
        assert EXPECTED[target] in out, (name, out)
        if name != "libqrt.so":
            assert "statically linked" in out, (name, out)


# ARMv7 NEON in a disassembly: a q register, a d register above d15 (VFPv3-D16 has 16), an element or structure
# instruction, or an integer element type
NEON_OPERANDS = re.compile(r"\bq\d+\b|\bd(1[6-9]|2\d|3[01])\b")
NEON_MNEMONIC = re.compile(
    r"v(ld|st)[1-4]\.|v(dup|ext|tbl|tbx|zip|uzp|trn|padd|mull|movl|movn|qmovn)\.|.*\.(i8|i16|i64|s8|u8|s16|u16|p8)$"
)
NEON_FILES = {"kernels/arm/kernels_neon.o", "kernels/arm/packed_neon.o"}


def neon_instructions(disassembly: str) -> list[str]:
    found = []
    for line in disassembly.splitlines():
        fields = line.split("\t")
        if (
            len(fields) >= 4
            and fields[2].startswith("v")
            and (NEON_OPERANDS.search(fields[3]) or NEON_MNEMONIC.match(fields[2]))
        ):
            found.append(line.strip())
    return found


def test_armv7_neon_only_in_kernel_files(armv7_build):
    """Every object of the 32-bit build but the NEON kernel files is VFP-only code (the library's baseline is
    -mfpu=vfpv3-d16; kernels_neon.c and packed_neon.c compile themselves for NEON and run only where dispatch.c saw
    HWCAP_NEON): no NEON instruction outside them, and some inside them (the check sees NEON when it is there)."""
    objdump = "arm-linux-gnueabihf-objdump"
    if shutil.which(objdump) is None:
        pytest.skip(f"{objdump} not installed (binutils-arm-linux-gnueabihf)")
    objects = sorted(armv7_build.rglob("*.o"))
    assert len(objects) > 20
    for obj in objects:
        name = obj.relative_to(armv7_build).as_posix()
        found = neon_instructions(run([objdump, "-d", obj]).stdout)
        if name in NEON_FILES:
            assert found, name
        else:
            assert not found, (name, found[:5])
