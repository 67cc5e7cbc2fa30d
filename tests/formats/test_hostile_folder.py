"""Issue 16, the readers of a model folder through the Python API: every file stays inside the folder, only regular
files are opened, reads and JSON nesting are bounded, config values are checked by key, errors never echo bytes."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import threading

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from qconv.formats import folder_files
from qconv.formats.errors import FormatError
from qconv.formats.hf_config import read_model_spec
from qconv.formats.printable import escaped, shown
from qconv.formats.safetensors_stream import SafetensorsSource
from qconv.formats.tokenizer_meta import read_hf_tokenizer
from tests.hostile_folder import SECRET, private_model, secret_outside

BOMB_DEPTH = 100_000  # json's C parser gives RecursionError near 1000


@pytest.fixture
def model(random_model_factory, tmp_path):
    return private_model(random_model_factory, tmp_path)


@pytest.fixture
def outside(tmp_path):
    return secret_outside(tmp_path)


def _config(model, **changes):
    path = model / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def _assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(error.value)
    assert "\n" not in message and len(message) < 500, message
    assert "secret-line" not in message and "root:x" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _safetensors_with_header(path, header: bytes, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


# ---------------------------------------------------------------- reading outside the folder


def test_chat_template_symlink_outside_is_refused(model, outside):
    (model / "chat_template.jinja").symlink_to(outside)
    with pytest.raises(FormatError) as e:
        read_hf_tokenizer(model, 300)
    _assert_one_line(e, "chat_template.jinja", "outside the model folder")


def test_symlink_inside_the_folder_is_followed(model):
    (model / "templates").mkdir()
    (model / "templates" / "chat.jinja").write_text("{{ messages[0]['content'] }}")
    (model / "chat_template.jinja").symlink_to("templates/chat.jinja")
    assert read_hf_tokenizer(model, 300).chat_template == "{{ messages[0]['content'] }}"


def test_hugging_face_cache_snapshot_links_to_its_blobs(model, tmp_path):
    repo = tmp_path / "hub" / "models--org--name"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in model.iterdir():
        shutil.copy(path, repo / "blobs" / f"blob-{path.name}")
        (snapshot / path.name).symlink_to(f"../../blobs/blob-{path.name}")
    assert read_model_spec(snapshot).n_layers == 2
    with SafetensorsSource(snapshot) as source:
        assert source.read_f32("model.norm.weight").shape == (64,)


@pytest.mark.parametrize("shard", ["../outside/x.safetensors", "ABSOLUTE"])
def test_index_shard_outside_the_folder_is_refused(model, tmp_path, shard):
    outside = tmp_path / "outside" / "x.safetensors"
    outside.parent.mkdir()
    (model / "model.safetensors").rename(outside)
    shard = str(outside) if shard == "ABSOLUTE" else shard
    with safe_open(str(outside), "np") as f:
        names = list(f.keys())
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(names, shard)}))
    with pytest.raises(FormatError) as e:
        SafetensorsSource(model)
    _assert_one_line(e, "outside the model folder")


def test_chat_template_json_symlink_is_refused_when_copied(model, outside, tmp_path):
    (model / "chat_template.json").symlink_to(outside)
    with pytest.raises(FormatError) as e:
        folder_files.copy_file(model, "chat_template.json", tmp_path / "copy.json")
    _assert_one_line(e, "chat_template.json", "outside the model folder")
    assert not (tmp_path / "copy.json").exists()


def test_copied_json_is_parsed(model, tmp_path):
    (model / "chat_template.json").write_text('{"chat_template": [' * 200)
    with pytest.raises(FormatError) as e:
        folder_files.copy_file(model, "chat_template.json", tmp_path / "copy.json")
    _assert_one_line(e, "chat_template.json", "nested")


# ---------------------------------------------------------------- not a regular file


def _in_thread(fn, timeout: float = 10.0):
    """fn() in a thread: a FIFO must fail at once, not block in open()."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return thread, outcome


def _unblock(fifo) -> None:
    """Release a reader stuck in open() (the test failed): a writer opens and closes the FIFO."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_fifo_named_model_safetensors_fails_at_once(model):
    fifo = model / "model.safetensors"
    fifo.unlink()
    os.mkfifo(fifo)
    thread, outcome = _in_thread(lambda: SafetensorsSource(model))
    if thread.is_alive():
        _unblock(fifo)
        pytest.fail("opening a FIFO named model.safetensors blocked")
    assert isinstance(outcome.get("error"), FormatError), outcome
    assert "not a regular file" in str(outcome["error"]) and "model.safetensors" in str(outcome["error"])


def test_fifo_config_fails_at_once(model):
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    thread, outcome = _in_thread(lambda: read_model_spec(model))
    if thread.is_alive():
        _unblock(model / "config.json")
        pytest.fail("opening a FIFO named config.json blocked")
    assert "not a regular file" in str(outcome.get("error")), outcome


def test_open_regular_refuses_a_fifo_swapped_in_after_the_check(tmp_path):
    os.mkfifo(tmp_path / "swapped")
    thread, outcome = _in_thread(lambda: folder_files.open_regular(tmp_path / "swapped"))
    if thread.is_alive():
        _unblock(tmp_path / "swapped")
        pytest.fail("open_regular blocked on a FIFO")
    assert "not a regular file" in str(outcome.get("error")), outcome


def test_folder_where_a_file_is_expected(model):
    (model / "tokenizer.json").unlink()
    (model / "tokenizer.json").mkdir()
    with pytest.raises(FormatError) as e:
        read_hf_tokenizer(model, 300)
    _assert_one_line(e, "tokenizer.json", "is a folder")
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").mkdir()
    with pytest.raises(FormatError) as e:
        SafetensorsSource(model)
    _assert_one_line(e, "model.safetensors", "is a folder")


def test_symlink_loop(model):
    (model / "config.json").unlink()
    (model / "config.json").symlink_to("loop.json")
    (model / "loop.json").symlink_to("config.json")
    with pytest.raises(FormatError) as e:
        read_model_spec(model)
    _assert_one_line(e, "config.json", "symbolic links")


# ---------------------------------------------------------------- bounded reads and JSON depth


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"])
def test_json_nesting_bomb(model, name):
    (model / name).write_text("[" * BOMB_DEPTH + "]" * BOMB_DEPTH)
    with pytest.raises(FormatError) as e:
        read_model_spec(model) if name == "config.json" else read_hf_tokenizer(model, 300)
    _assert_one_line(e, name, "nested")


def test_index_nesting_bomb(model):
    (model / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * BOMB_DEPTH)
    with pytest.raises(FormatError) as e:
        SafetensorsSource(model)
    _assert_one_line(e, "model.safetensors.index.json", "nested")


def test_safetensors_header_nesting_bomb(tmp_path):
    _safetensors_with_header(tmp_path / "model.safetensors", b'{"w": ' + b"[" * BOMB_DEPTH)
    with pytest.raises(FormatError) as e:
        SafetensorsSource(tmp_path)
    _assert_one_line(e, "model.safetensors", "nested")


def test_depth_scan_ignores_brackets_inside_strings():
    deep_text = json.dumps({"a": ["[[[[{{{{" * 100, {"b": "]]]]"}]}).encode()
    assert folder_files.json_depth(deep_text) == 3
    assert folder_files.json_depth(json.dumps({"q": 'x\\"[[[['}).encode()) == 1
    assert folder_files.parse_json(deep_text, "x")["a"][1] == {"b": "]]]]"}


def test_file_over_its_size_limit(model):
    (model / "config.json").write_text(" " * (folder_files.MAX_BYTES["config.json"] + 1) + "{}")
    with pytest.raises(FormatError) as e:
        read_model_spec(model)
    _assert_one_line(e, "config.json", "bytes, more than")


# ---------------------------------------------------------------- describe, do not dump


def test_text_file_as_safetensors_is_described_not_printed(tmp_path):
    (tmp_path / "model.safetensors").write_text(SECRET * 4)
    with pytest.raises(FormatError) as e:
        SafetensorsSource(tmp_path)
    message = _assert_one_line(e, "model.safetensors", "not a safetensors file")
    (header_len,) = struct.unpack("<Q", SECRET[:8].encode())
    assert str(header_len) not in message  # the first 8 bytes, as a number


@pytest.mark.parametrize("content", [SECRET, "\x1b]0;title\x07" + SECRET, "\xff\xfe" + SECRET])
def test_unparsable_config_is_described_not_printed(model, content):
    (model / "config.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(FormatError) as e:
        read_model_spec(model)
    message = _assert_one_line(e, "config.json")
    assert "\x1b" not in message


# ---------------------------------------------------------------- safetensors header values


@pytest.mark.parametrize(
    "shape, fragment",
    [([2**64], "shape"), ([2**62, 4], "data offsets"), ([-1], "shape"), ([True], "shape"), (["4"], "shape")],
)
def test_implausible_shapes(tmp_path, shape, fragment):
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 16]}}).encode()
    _safetensors_with_header(tmp_path / "model.safetensors", header, bytes(16))
    with pytest.raises(FormatError) as e:
        SafetensorsSource(tmp_path)
    _assert_one_line(e, "'w'", fragment)


@pytest.mark.parametrize("offsets", [[0, 2**64], [0.0, 16.0], "0-16", [16, 0]])
def test_implausible_offsets(tmp_path, offsets):
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": offsets}}).encode()
    _safetensors_with_header(tmp_path / "model.safetensors", header, bytes(16))
    with pytest.raises(FormatError) as e:
        SafetensorsSource(tmp_path)
    _assert_one_line(e, "'w'")


def test_tensor_name_with_control_characters_is_escaped(tmp_path):
    header = json.dumps({"w\x1b]0;x\x07": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    _safetensors_with_header(tmp_path / "model.safetensors", header, bytes(8))
    with pytest.raises(FormatError) as e:
        SafetensorsSource(tmp_path)
    assert "\x1b" not in str(e.value) and "\\x1b" in str(e.value)


def test_valid_checkpoint_still_reads(tmp_path):
    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(tmp_path / "model.safetensors"))
    with SafetensorsSource(tmp_path) as source:
        assert source.entries["w"].n_elements == 6
        assert source.read_f32("w", rows=(1, 2)).tolist() == [[3, 4, 5]]


# ---------------------------------------------------------------- config.json values, by key


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"rope_scaling": {"rope_type": "linear"}}, "rope_scaling.factor"),
        ({"rope_scaling": {"rope_type": "yarn", "original_max_position_embeddings": 4096}}, "rope_scaling.factor"),
        ({"rope_scaling": {"rope_type": "linear", "factor": "2"}}, "rope_scaling.factor"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 0}}, "rope_scaling.factor"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4, "beta_fast": [32]}}, "rope_scaling.beta_fast"),
        (
            {"rope_scaling": {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 4096.5}},
            "rope_scaling.original_max_position_embeddings",
        ),
        ({"rope_scaling": ["linear", 2]}, "rope_scaling"),
        ({"max_position_embeddings": 2**40}, "max_position_embeddings"),
        ({"max_position_embeddings": "4096"}, "max_position_embeddings"),
        ({"rms_norm_eps": "1e-6"}, "rms_norm_eps"),
        ({"rms_norm_eps": [1e-6]}, "rms_norm_eps"),
        ({"rope_theta": {"value": 10000}}, "rope_theta"),
        ({"num_hidden_layers": True}, "num_hidden_layers"),
        ({"num_hidden_layers": 2.0}, "num_hidden_layers"),
        ({"num_hidden_layers": 10**12}, "num_hidden_layers"),
        ({"vocab_size": 1e9}, "vocab_size"),
        ({"num_key_value_heads": "2"}, "num_key_value_heads"),
        ({"head_dim": 16.0}, "head_dim"),
        ({"tie_word_embeddings": "false"}, "tie_word_embeddings"),
        ({"attention_bias": 1}, "attention_bias"),
        ({"bos_token_id": -1}, "bos_token_id"),
        ({"eos_token_id": [299, "x"]}, "eos_token_id"),
        ({"_name_or_path": ["a"]}, "_name_or_path"),
        ({"architectures": [{"LlamaForCausalLM": 1}]}, "architectures"),
        ({"architectures": "LlamaForCausalLM"}, "architectures"),
    ],
)
def test_config_value_of_wrong_type_names_the_key(model, changes, key):
    _config(model, **changes)
    with pytest.raises(FormatError) as e:
        read_model_spec(model)
    _assert_one_line(e, "config.json", f"'{key}'")


def test_yarn_without_original_context_uses_max_position_embeddings(model):
    _config(model, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    spec = read_model_spec(model)
    assert spec.rope_scaling["original_max_position_embeddings"] == spec.context_length == 4096


def test_rope_parameters_without_type_is_default_rope(model):
    _config(model, rope_theta=None, rope_parameters={"rope_theta": 500000.0})
    spec = read_model_spec(model)
    assert spec.rope_scaling == {} and spec.rope_theta == 500000.0


# ---------------------------------------------------------------- tokenizer files, by key


@pytest.mark.parametrize(
    "file, change, fragment",
    [
        ("tokenizer.json", lambda t: t["model"].__setitem__("vocab", [["a", 1]]), "model.vocab"),
        ("tokenizer.json", lambda t: t["model"].__setitem__("vocab", {"a": "1"}), "has id"),
        ("tokenizer.json", lambda t: t["model"].__setitem__("merges", "a b"), "model.merges"),
        ("tokenizer.json", lambda t: t.__setitem__("added_tokens", {"id": 1}), "added_tokens"),
        ("tokenizer.json", lambda t: t["added_tokens"].append({"id": "5", "content": "x"}), "added token"),
        ("tokenizer_config.json", lambda t: t.__setitem__("chat_template", {"t": 1}), "chat_template"),
        ("tokenizer_config.json", lambda t: t.__setitem__("chat_template", [{"name": 1}]), "chat_template"),
        ("generation_config.json", lambda t: t.__setitem__("bos_token_id", "1"), "bos_token_id"),
    ],
)
def test_tokenizer_value_of_wrong_type(model, file, change, fragment):
    if file == "generation_config.json":  # its ids are read only where the tokenizer files name no token
        for source in ("tokenizer_config.json", "special_tokens_map.json"):
            (model / source).unlink()
    content = json.loads((model / file).read_text())
    change(content)
    (model / file).write_text(json.dumps(content))
    with pytest.raises(FormatError) as e:
        read_hf_tokenizer(model, 300)
    _assert_one_line(e, fragment)


# ---------------------------------------------------------------- terminal text


def test_escaped_keeps_printable_text_and_escapes_controls():
    assert escaped("Ġhello élan 日本") == "Ġhello élan 日本"
    assert escaped("\x1b]0;x\x07\n\u202e") == "\\x1b]0;x\\x07\\x0a\\u202e"
    assert shown("a" * 200).endswith("...") and len(shown("a" * 200)) == 80
    assert shown(2**64) == str(2**64) and math.isfinite(float(shown(1.5)))
