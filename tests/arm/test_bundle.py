"""qconv bundle: the rpi5 bundle unpacks and its run.sh produces text under qemu; models a target cannot run are
refused with a message."""

from __future__ import annotations

import json
import os
import tarfile

import gguf
import numpy as np
import pytest

from qconv.converter.bundle import make_bundle
from qconv.formats.errors import FormatError
from tests.arm.conftest import run


def test_rpi5_bundle_runs_under_qemu(aarch64_build, smollm2_package_gguf, tmp_path):
    out = tmp_path / "bundle.tar.gz"
    make_bundle(smollm2_package_gguf, "rpi5", out)
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path, filter="data")
    top = tmp_path / "qconv-bundle-rpi5"
    manifest = json.loads((top / "bundle.json").read_text())
    assert manifest["arch"] == "aarch64" and manifest["kernel"] == "neon-dotprod"
    assert os.access(top / "run.sh", os.X_OK)
    proc = run(
        [top / "run.sh", "--raw", "-p", "The sky is", "-n", "4", "--temp", "0", "-v"],
        env={"QEMU": "qemu-aarch64 -cpu cortex-a76"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "run.sh printed no text"
    assert "kernel Q4_1: neon-dotprod" in proc.stderr  # the Cortex-A76 of the Pi 5 has SDOT


def tiny_gguf(path, arch="llama", raw_type=gguf.GGMLQuantizationType.Q4_0):
    w = gguf.GGUFWriter(str(path), arch)
    block = gguf.GGML_QUANT_SIZES[raw_type]
    w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 256 // block[0] * block[1]), np.uint8), raw_dtype=raw_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_refuses_type_without_kernel(tmp_path):
    model = tiny_gguf(tmp_path / "iq2.gguf", raw_type=gguf.GGMLQuantizationType.IQ2_XXS)
    with pytest.raises(FormatError, match="IQ2_XXS, which has no kernel for target rpi4"):
        make_bundle(model, "rpi4", tmp_path / "b.tar.gz", binary=model)
    assert not (tmp_path / "b.tar.gz").exists()


def test_refuses_unknown_architecture(tmp_path):
    model = tiny_gguf(tmp_path / "gemma.gguf", arch="gemma3")
    with pytest.raises(FormatError, match="architecture 'gemma3'"):
        make_bundle(model, "rpi5", tmp_path / "b.tar.gz", binary=model)


def test_refuses_model_larger_than_32_bit_address_space(tmp_path):
    model = tiny_gguf(tmp_path / "big.gguf")
    os.truncate(model, 3 << 30)  # sparse: a 3 GiB file cannot be mapped by a 32-bit process
    with pytest.raises(FormatError, match="does not fit target armv7"):
        make_bundle(model, "armv7", tmp_path / "b.tar.gz", binary=model)


def test_cli_refusal_message(tmp_path):
    from click.testing import CliRunner

    from qconv.converter.bundle_cli import bundle

    model = tiny_gguf(tmp_path / "iq2.gguf", raw_type=gguf.GGMLQuantizationType.IQ2_XXS)
    result = CliRunner().invoke(bundle, [str(model), "--target", "jetson-orin", "-o", str(tmp_path / "b.tgz")])
    assert result.exit_code == 1
    assert "no kernel for target jetson-orin" in result.output
