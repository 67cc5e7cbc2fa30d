"""`qconv analyze` and `to-gguf --type auto` as units (converter/work): on a random 12-layer model, the serial run and
a local pool of two workers (-j 2) write the same sens.json and the same GGUF, byte for byte, and the units log shows
both workers at work. Small shapes: each run takes seconds."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from qconv.converter.cli import main
from tests.conftest import have

pytestmark = pytest.mark.skipif(not have("qconv.runtime.model"), reason="the runtime's Model is not built yet")
SHAPE = dict(arch="llama", hidden=128, n_layers=12, n_heads=2, n_kv_heads=1, ffn=256, vocab=320)  # head size 64
QUICK = ("--max-tokens", 256, "-c", 64)  # four windows of 64 tokens per group trial


def qconv(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def units_log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def folder(random_model_factory):
    return random_model_factory(**SHAPE)


@pytest.fixture(scope="module")
def imatrix(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("imatrix") / "imatrix.gguf"
    qconv("calibrate", folder, "-o", out, "-c", 64, "--chunks", 4, "-q")
    return out


def test_analyze_is_the_same_serially_and_on_two_workers(folder, imatrix, tmp_path):
    serial, pooled, log = tmp_path / "serial.json", tmp_path / "pooled.json", tmp_path / "units.jsonl"
    qconv("analyze", folder, "--imatrix", imatrix, *QUICK, "-o", serial, "-q")
    qconv("analyze", folder, "--imatrix", imatrix, *QUICK, "-o", pooled, "-q", "-j", 2, "--units-log", log)
    assert pooled.read_bytes() == serial.read_bytes()

    result = json.loads(serial.read_text())
    entries = units_log(log)
    assert [e["key"] for e in entries if e["kind"] == "tensor_errors"] == list(result["tensors"])  # source order
    assert len(result["tensors"]) == 12 * 7 + 2
    groups = [e["key"] for e in entries if e["kind"] == "group_kld"]
    assert sorted(groups) == sorted(g["group"] for g in result["groups"]) and len(groups) == 7 * 3 + 2
    assert len({e["where"]["pid"] for e in entries}) == 2  # both workers ran units
    assert all(e["attempts"] == 1 for e in entries)
    ranked = [(-g["kld"], g["group"]) for g in result["groups"]]
    assert ranked == sorted(ranked)  # by KLD, largest first; ties by name


def test_to_gguf_auto_writes_the_same_file_on_two_workers(folder, tmp_path):
    serial, pooled, log = tmp_path / "serial.gguf", tmp_path / "pooled.gguf", tmp_path / "units.jsonl"
    auto = ("--type", "auto", "--target-bpw", 5.0, "-q")
    qconv("to-gguf", folder, "-o", serial, *auto)
    qconv("to-gguf", folder, "-o", pooled, *auto, "-j", 2, "--units-log", log)
    assert pooled.read_bytes() == serial.read_bytes()
    entries = units_log(log)
    assert {e["kind"] for e in entries} == {"tensor_errors", "group_kld"}
    assert len({e["where"]["pid"] for e in entries}) == 2


@pytest.mark.parametrize("flag", [("-j", "2"), ("--units-log", "units.jsonl"), ("--work-dir", ".")])
def test_work_options_need_type_auto(folder, tmp_path, flag):
    from tests.qconv_cli import assert_user_error, run

    out = tmp_path / "out.gguf"
    code, output = run("to-gguf", folder, "-o", out, "--type", "q8_0", *flag)
    assert_user_error(code, output, out, f"{flag[0]} ", "needs --type auto")
