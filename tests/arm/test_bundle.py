"""qconv bundle: the rpi5 bundle unpacks and its run.sh produces text under qemu; models a target cannot run are
refused with a message; an installed (not editable) qconv builds qrun-native from the sources it ships, into a
cache folder, and names the package of a missing cross compiler."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import gguf
import numpy as np
import pytest

from qconv.converter.bundle import make_bundle
from qconv.formats.errors import FormatError
from tests.arm.conftest import run
from tests.native.test_loader import write_tiny_model

REPO = Path(__file__).resolve().parents[2]


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
    model = tiny_gguf(tmp_path / "falcon.gguf", arch="falcon")
    with pytest.raises(FormatError, match="architecture 'falcon' is not run by qrun-native"):
        make_bundle(model, "rpi5", tmp_path / "b.tar.gz", binary=model)


@pytest.mark.parametrize("arch", ["gemma3", "smollm3", "phi3", "qwen3moe", "olmoe"])
def test_accepts_the_families_qrun_native_runs(tmp_path, arch):
    model = tiny_gguf(tmp_path / f"{arch}.gguf", arch=arch)
    result = make_bundle(model, "rpi5", tmp_path / "b.tar.gz", binary=model)
    assert result.path.is_file()


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


def test_missing_cross_compiler_names_its_package(tmp_path, monkeypatch):
    only_make = tmp_path / "bin"
    only_make.mkdir()
    (only_make / "make").symlink_to(shutil.which("make") or "/usr/bin/make")
    monkeypatch.setenv("PATH", str(only_make))
    model = write_tiny_model(tmp_path / "tiny.gguf", weight_type="Q4_0")
    for target, package in (("armv7", "gcc-arm-linux-gnueabihf"), ("rpi4", "gcc-aarch64-linux-gnu")):
        with pytest.raises(FormatError, match=f"needs .*-gcc, which is not installed .*apt-get install {package}"):
            make_bundle(model, target, tmp_path / "b.tar.gz")
    assert not (tmp_path / "b.tar.gz").exists()


def test_unwritable_output_is_refused_before_the_build(tmp_path):
    model = write_tiny_model(tmp_path / "tiny.gguf", weight_type="Q4_0")
    with pytest.raises(FormatError, match="missing/b.tar.gz: cannot write, folder .* does not exist"):
        make_bundle(model, "armv7", tmp_path / "missing" / "b.tar.gz")


def clean_copy(dst: Path) -> Path:
    """The working tree as a fresh clone has it: no build folders, no compiled extension."""
    skip = shutil.ignore_patterns(".git", "build", "__pycache__", "*.so", "*.egg-info", ".pytest_cache")
    return Path(shutil.copytree(REPO, dst, ignore=skip))


@pytest.fixture(scope="module")
def installed_qconv(tmp_path_factory) -> Path:
    """`pip install .` of this tree (a wheel, then installed with --target into a folder of its own); run with
    `python -S` and only that folder and the dependencies' site-packages on the path, so that the editable install
    of this checkout cannot answer an import."""
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc and make are needed to build the package and qrun-native")
    root = tmp_path_factory.mktemp("installed")
    source = clean_copy(root / "src")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    proc = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", root / "wheel", source],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next((root / "wheel").glob("qconv-*.whl"))
    proc = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", root / "site", wheel], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.rmtree(source)
    return root / "site"


def run_installed(site: Path, code: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(site), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    cmd = [sys.executable, "-S", "-c", code, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=site.parent, timeout=600)


def test_bundle_from_an_installed_package_builds_in_the_cache(installed_qconv, tmp_path):
    site = installed_qconv
    shipped = site / "qconv" / "native"
    listed = [line.split("#")[0].strip() for line in (REPO / "native" / "SOURCES").read_text().splitlines()]
    missing = [
        name
        for name in ["Makefile", "SOURCES", "api/qrt.h", "kernels/packed_simd.inc", *filter(None, listed)]
        if not (shipped / name).is_file()
    ]
    assert not missing, f"not shipped: {missing}"
    assert not (shipped / "build").exists()
    where = run_installed(site, "import qconv.converter.bundle as b; print(b.NATIVE_DIR)")
    assert where.stdout.strip() == str(shipped), where.stderr

    model = write_tiny_model(tmp_path / "tiny.gguf", weight_type="Q4_0")
    out, cache = tmp_path / "b.tar.gz", tmp_path / "cache"
    host = os.uname().machine
    main = "from qconv.converter.cli import main; main()"
    proc = run_installed(site, main, "bundle", model, "--target", host, "-o", out, env={"QCONV_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(cache.glob(f"native-build/*/{host}/qrun-native")), "qrun-native was not built in the cache"
    assert not (shipped / "build").exists(), "the build wrote into the installed package"
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path, filter="data")
    text = run([tmp_path / f"qconv-bundle-{host}" / "run.sh", "--raw", "-p", "ab", "-n", "2", "--temp", "0"])
    assert text.returncode == 0, text.stderr
