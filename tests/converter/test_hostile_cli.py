"""Issue 16 through the CLIs (to-gguf, to-onnx, inspect, qrun on an ONNX folder): a hostile or mistaken model folder
ends in one line naming the file and key, before anything large is allocated, and nothing is left behind."""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import threading

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from qconv.formats.gguf_read import read_gguf
from tests.hostile_folder import private_model, secret_outside
from tests.qconv_cli import assert_user_error, run

ESC_TITLE = "\x1b]0;pwned\x07"


@pytest.fixture
def model(random_model_factory, tmp_path):
    return private_model(random_model_factory, tmp_path)


@pytest.fixture
def outside(tmp_path):
    return secret_outside(tmp_path)


def _config(model, **changes):
    path = model / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _assert_user_error(code, output, out, *fragments):
    assert_user_error(code, output, out, *fragments, absent=("secret-line",))


def _both_commands(tmp_path):
    """(command, output) of to-gguf and to-onnx: the same folder errors reach both."""
    return [("to-gguf", tmp_path / "out.gguf"), ("to-onnx", tmp_path / "out_onnx")]


def _convert(command, model, out):
    extra = ["--no-calibrate"] if command == "to-onnx" else ["--type", "q8_0", "-q"]
    return run(command, model, "-o", out, *extra)


# ---------------------------------------------------------------- outside the folder, not regular files


@pytest.mark.parametrize("command", ["to-gguf", "to-onnx"])
def test_chat_template_symlink_is_not_embedded(model, outside, tmp_path, command):
    (model / "chat_template.jinja").symlink_to(outside)
    out = dict(_both_commands(tmp_path))[command]
    _assert_user_error(*_convert(command, model, out), out, "chat_template.jinja", "outside the model folder")


def test_chat_template_json_symlink_is_not_copied(model, outside, tmp_path):
    (model / "chat_template.json").symlink_to(outside)
    out = tmp_path / "out_onnx"
    _assert_user_error(*_convert("to-onnx", model, out), out, "chat_template.json", "outside the model folder")


def test_index_shard_outside_the_folder(model, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (model / "model.safetensors").rename(elsewhere / "x.safetensors")
    from safetensors import safe_open

    with safe_open(str(elsewhere / "x.safetensors"), "np") as f:
        weight_map = dict.fromkeys(f.keys(), "../elsewhere/x.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = tmp_path / "out.gguf"
    _assert_user_error(*_convert("to-gguf", model, out), out, "x.safetensors", "outside the model folder")


def _invoke_with_deadline(args, fifo, seconds=20.0):
    """CliRunner in a thread: before the fix open() of the FIFO never returned."""
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=run(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # release the blocked reader
        thread.join(seconds)
        pytest.fail(f"qconv {args[0]} blocked on a FIFO")
    return outcome["result"]


@pytest.mark.parametrize("command", ["to-gguf", "to-onnx", "inspect"])
def test_fifo_named_model_safetensors(model, tmp_path, command):
    fifo = model / "model.safetensors"
    fifo.unlink()
    os.mkfifo(fifo)
    out = tmp_path / "out"
    args = [command, model] if command == "inspect" else [command, model, "-o", out]
    code, output = _invoke_with_deadline(args, fifo)
    _assert_user_error(code, output, out, "model.safetensors", "not a regular file")


def test_inspect_a_fifo_gguf(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    code, output = _invoke_with_deadline(["inspect", fifo], fifo)
    _assert_user_error(code, output, tmp_path / "none", "model.gguf", "not a regular file")


# ---------------------------------------------------------------- config numbers before allocation


class address_space_headroom:
    """The process may map only `gib` more while inside: a config that makes a command allocate gigabytes fails
    there (MemoryError) instead of swapping the machine."""

    def __init__(self, gib: float = 3.0):
        self.gib = gib

    def __enter__(self):
        self.saved = resource.getrlimit(resource.RLIMIT_AS)
        status = open("/proc/self/status").read()
        mapped = int(status.split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mapped + int(self.gib * 2**30), self.saved[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_AS, self.saved)


@pytest.mark.parametrize("command", ["to-gguf", "to-onnx"])
@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"vocab_size": 1_000_000_000}, ("model.embed_tokens.weight", "[1000000000, 64]")),
        ({"num_hidden_layers": 100_000_000}, ("num_hidden_layers is 100000000", "holds 2 layers")),
        ({"num_hidden_layers": 10**12}, ("num_hidden_layers",)),
    ],
)
def test_config_numbers_checked_against_tensors_first(model, tmp_path, command, changes, fragments):
    _config(model, **changes)
    out = dict(_both_commands(tmp_path))[command]
    with address_space_headroom():
        result = _convert(command, model, out)
    _assert_user_error(*result, out, *fragments)


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"rope_scaling": {"rope_type": "linear"}}, "rope_scaling.factor"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": "4"}}, "rope_scaling.factor"),
        ({"max_position_embeddings": 2**40}, "max_position_embeddings"),
        ({"rms_norm_eps": "small"}, "rms_norm_eps"),
        ({"rope_scaling": [4.0]}, "rope_scaling"),
        ({"tie_word_embeddings": "no"}, "tie_word_embeddings"),
        ({"num_key_value_heads": 2.0}, "num_key_value_heads"),
    ],
)
@pytest.mark.parametrize("command", ["to-gguf", "to-onnx"])
def test_config_value_of_wrong_type(model, tmp_path, command, changes, key):
    _config(model, **changes)
    out = dict(_both_commands(tmp_path))[command]
    _assert_user_error(*_convert(command, model, out), out, "config.json", f"'{key}'")


def test_yarn_without_original_context_converts(model, tmp_path):
    _config(model, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    out = tmp_path / "out.gguf"
    code, output = _convert("to-gguf", model, out)
    assert code == 0, output
    with read_gguf(out) as g:
        assert g.metadata["llama.rope.scaling.original_context_length"] == 4096


@pytest.mark.parametrize("command", ["to-gguf", "to-onnx"])
def test_json_nesting_bomb(model, tmp_path, command):
    (model / "tokenizer.json").write_text("[" * 100_000)
    out = dict(_both_commands(tmp_path))[command]
    _assert_user_error(*_convert(command, model, out), out, "tokenizer.json", "nested")


def test_safetensors_shape_of_2_to_the_64(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**64], "data_offsets": [0, 0]}}).encode()
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    code, output = run("inspect", folder)
    _assert_user_error(code, output, tmp_path / "none", "model.safetensors", "'w'", "shape")


# ---------------------------------------------------------------- a GGUF as input


def _f32_gguf(model, tmp_path):
    path = tmp_path / "f32.gguf"
    code, output = run("to-gguf", model, "-o", path, "--type", "f32", "-q")
    assert code == 0, output
    return path


def test_nan_in_a_gguf_input_is_named(model, tmp_path):
    source = _f32_gguf(model, tmp_path)
    with read_gguf(source) as g:
        offset = g.tensors["blk.0.ffn_down.weight"].offset
    data = bytearray(source.read_bytes())
    data[offset : offset + 4] = np.float32(np.nan).tobytes()
    source.write_bytes(bytes(data))
    out = tmp_path / "out.gguf"
    _assert_user_error(*run("to-gguf", source, "-o", out, "--type", "q8_0", "-q"), out, "blk.0.ffn_down", "NaN")


# ---------------------------------------------------------------- inspect escapes what it prints


def test_inspect_escapes_control_characters(tmp_path):
    path = tmp_path / "evil.gguf"
    writer = gguf.GGUFWriter(str(path), "llama" + ESC_TITLE)
    writer.add_string("general.name", "name" + ESC_TITLE)
    writer.add_string("key\x1b[2J", "value")
    writer.add_array("list\x1b", ["a\x1b[31m", "b"])
    writer.add_tensor("w\x1b[31m", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code, output = run("inspect", path)
    assert code == 0, output
    assert "\x1b" not in output and "\x07" not in output
    assert "llama\\x1b]0;pwned\\x07" in output and "key\\x1b[2J" in output and "w\\x1b[31m" in output
    code, output = run("inspect", path, "--json")
    assert code == 0 and "\x1b" not in output


# ---------------------------------------------------------------- qrun on an ONNX folder


@pytest.fixture
def onnx_folder(model, tmp_path):
    from qconv.converter.onnx_export import OnnxOptions, export_onnx

    out = tmp_path / "onnx"
    export_onnx(model, out, OnnxOptions(calibrate=False))
    return out


def _qrun(folder):
    from qconv.runtime.cli import main as qrun

    result = CliRunner().invoke(qrun, [str(folder), "--raw", "--prompt", "hi", "-n", "2", "--temp", "0"])
    return result.exit_code, result.output


def _genai(folder, section, **changes):
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    target = config["model"]["decoder"] if section == "decoder" else config[section]
    target.update(changes)
    path.write_text(json.dumps(config))


def _assert_qrun_error(code, output, *fragments):
    lines = [line for line in output.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("qrun: error:"), output
    for fragment in fragments:
        assert fragment in lines[0], output


@pytest.mark.parametrize(
    "section, changes, fragments",
    [
        ("decoder", {"num_hidden_layers": 1_000_000_000}, ("num_hidden_layers", "has 2 layers")),
        ("decoder", {"num_hidden_layers": 2.5}, ("num_hidden_layers",)),
        ("decoder", {"num_key_value_heads": 3}, ("num_key_value_heads", "has 2")),
        ("decoder", {"head_size": 2**40}, ("head_size",)),
        ("search", {"max_length": "long"}, ("max_length",)),
    ],
)
def test_qrun_checks_genai_config_against_the_graph(onnx_folder, section, changes, fragments):
    _genai(onnx_folder, section, **changes)
    with address_space_headroom():
        result = _qrun(onnx_folder)
    _assert_qrun_error(*result, "genai_config.json", *fragments)


def test_qrun_refuses_genai_config_outside_the_folder(onnx_folder, tmp_path):
    elsewhere = tmp_path / "genai_config.json"
    shutil.move(onnx_folder / "genai_config.json", elsewhere)
    (onnx_folder / "genai_config.json").symlink_to(elsewhere)
    _assert_qrun_error(*_qrun(onnx_folder), "genai_config.json", "outside the model folder")
