"""qconv to-gguf and inspect through the CLI: outputs, and one-line errors that leave nothing behind."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from qconv.formats.gguf_read import read_gguf
from tests.qconv_cli import assert_user_error, run

SHAPE = dict(arch="llama", hidden=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512, vocab=512)


@pytest.fixture
def small_model(random_model_factory, tmp_path):
    """A private f32 copy the test may damage (f32 so numpy can rewrite it)."""
    dst = tmp_path / "model"
    shutil.copytree(random_model_factory(dtype="f32", **SHAPE), dst)
    return dst


@pytest.mark.parametrize("type_name", ["f32", "f16", "bf16", "q8_0", "Q8_0"])
def test_converts_each_type(random_model_factory, tmp_path, type_name):
    out = tmp_path / "out.gguf"
    code, output = run("to-gguf", random_model_factory(dtype="bf16", **SHAPE), "-o", out, "--type", type_name, "-q")
    assert code == 0, output
    with read_gguf(out) as g:
        assert g.architecture == "llama"
        assert g.metadata["llama.block_count"] == 2
        assert g.metadata["tokenizer.ggml.model"] == "gpt2"
        weight_type = g.tensors["blk.0.ffn_down.weight"].type_name
        assert weight_type == type_name.upper()
        assert g.tensors["blk.0.attn_norm.weight"].type_name == "F32"
    assert "bits per weight" in output


def test_json_summary_and_inspect(small_model, tmp_path):
    out = tmp_path / "out.gguf"
    code, output = run("to-gguf", small_model, "-o", out, "--type", "q8_0", "--json")
    assert code == 0
    summary = json.loads(output)
    assert summary["groups"]["ffn_down.weight"]["types"] == {"q8_0": 2}
    code, output = run("inspect", out, "--json")
    info = json.loads(output)
    assert info["n_tensors"] == summary["n_tensors"]
    assert abs(info["bits_per_weight"] - summary["bits_per_weight"]) < 1e-3
    assert info["metadata"]["general.architecture"] == "llama"
    code, output = run("inspect", small_model)
    assert code == 0 and "F32" in output


def test_missing_config(small_model, tmp_path):
    (small_model / "config.json").unlink()
    out = tmp_path / "out.gguf"
    assert_user_error(*run("to-gguf", small_model, "-o", out), out, "config.json")


def test_invalid_config(small_model, tmp_path):
    (small_model / "config.json").write_text("{")
    out = tmp_path / "out.gguf"
    assert_user_error(*run("to-gguf", small_model, "-o", out), out, "config.json", "not valid JSON")


def test_unsupported_architecture(small_model, tmp_path):
    config = json.loads((small_model / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (small_model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out.gguf"
    assert_user_error(
        *run("to-gguf", small_model, "-o", out), out, "GPTNeoXForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM"
    )


def test_missing_shard(random_model_factory, tmp_path):
    src = random_model_factory(dtype="f32", shard_bytes=300_000, **SHAPE)
    model = tmp_path / "model"
    shutil.copytree(src, model)
    shards = sorted(model.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    out = tmp_path / "out.gguf"
    assert_user_error(*run("to-gguf", model, "-o", out), out, shards[-1].name, "missing")


def test_truncated_safetensors(small_model, tmp_path):
    path = next(small_model.glob("*.safetensors"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.gguf"
    assert_user_error(*run("to-gguf", small_model, "-o", out), out, path.name, "truncated")


def test_shape_contradicts_config(small_model, tmp_path):
    path = next(small_model.glob("*.safetensors"))
    tensors = load_file(str(path))
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = tensors[name][:256]
    save_file(tensors, str(path))
    out = tmp_path / "out.gguf"
    assert_user_error(*run("to-gguf", small_model, "-o", out), out, name, "[256, 256]", "[512, 256]")


def test_nan_tensor_is_named_and_nothing_written(small_model, tmp_path):
    path = next(small_model.glob("*.safetensors"))
    tensors = load_file(str(path))
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name][3, 5] = np.nan
    save_file(tensors, str(path))
    out = tmp_path / "out.gguf"
    assert_user_error(*run("to-gguf", small_model, "-o", out), out, name, "NaN")


@pytest.mark.parametrize("type_name", ["iq4_nl", "q3_k_m", "q6_k"])
def test_weight_whose_square_overflows_is_named_and_nothing_written(small_model, tmp_path, type_name):
    """One finite weight of 1e20 in a q_proj: iq4_nl died with SIGSEGV leaving a .part file; q3_K and q6_K wrote
    garbage blocks without a word."""
    path = next(small_model.glob("*.safetensors"))
    tensors = load_file(str(path))
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors[name][9, 17] = 1e20
    save_file(tensors, str(path))
    out = tmp_path / "out.gguf"
    assert_user_error(*run("to-gguf", small_model, "-o", out, "--type", type_name), out, name, "row ")


def test_unwritable_output(small_model, tmp_path):
    out = tmp_path / "no-such-folder" / "out.gguf"
    assert_user_error(*run("to-gguf", small_model, "-o", out), out, "does not exist")


def test_unknown_type_lists_valid(small_model, tmp_path):
    out = tmp_path / "out.gguf"
    assert_user_error(*run("to-gguf", small_model, "-o", out, "--type", "q9_9"), out, "q9_9", "q8_0", "f16")


def test_existing_output_survives_a_failed_conversion(small_model, tmp_path):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous model")
    (small_model / "config.json").write_text("{")
    code, _ = run("to-gguf", small_model, "-o", out)
    assert code != 0 and out.read_bytes() == b"previous model"


def _imatrix_for(model_dir, tmp_path, width_delta=0):
    from qconv.formats.imatrix import ImportanceMatrix, write_imatrix

    sums = {
        f"blk.{i}.{r}.weight": np.full(256 + width_delta, 2.0, np.float32)
        for i in range(2)
        for r in ("attn_q", "attn_k", "attn_v", "ffn_up")
    }
    counts = dict.fromkeys(sums, 4.0)
    return write_imatrix(
        tmp_path / "imatrix.gguf", ImportanceMatrix(sums=sums, counts=counts, datasets=["t.txt"], chunk_count=2)
    )


def test_imatrix_is_used_and_recorded(small_model, tmp_path):
    out = tmp_path / "out.gguf"
    imatrix = _imatrix_for(small_model, tmp_path)
    code, output = run("to-gguf", small_model, "-o", out, "--type", "q4_k_m", "--imatrix", imatrix, "-q")
    assert code == 0, output
    with read_gguf(out) as g:
        assert g.metadata["quantize.imatrix.file"] == str(imatrix)
        assert g.metadata["quantize.imatrix.entries_count"] == 8
        assert g.metadata["quantize.imatrix.dataset"] == "t.txt"


def test_imatrix_of_another_model_names_the_tensor(small_model, tmp_path):
    out = tmp_path / "out.gguf"
    imatrix = _imatrix_for(small_model, tmp_path, width_delta=64)
    assert_user_error(
        *run("to-gguf", small_model, "-o", out, "--type", "q4_k_m", "--imatrix", imatrix),
        out,
        "blk.0.attn_k.weight",
        "320 values",
    )


def test_requantize_a_gguf(small_model, tmp_path):
    f16 = tmp_path / "f16.gguf"
    assert run("to-gguf", small_model, "-o", f16, "--type", "f16", "-q")[0] == 0
    out = tmp_path / "q.gguf"
    code, output = run("to-gguf", f16, "-o", out, "--type", "q4_0", "-q")
    assert code == 0, output
    with read_gguf(out) as g, read_gguf(f16) as src:
        assert g.tensors["blk.1.ffn_up.weight"].type_name == "Q4_0"
        assert g.metadata["tokenizer.ggml.tokens"] == src.metadata["tokenizer.ggml.tokens"]
        assert g.metadata["general.file_type"] == 2
    assert_user_error(
        *run("to-gguf", out, "-o", tmp_path / "again.gguf", "--type", "q2_k"),
        tmp_path / "again.gguf",
        "--allow-requantize",
    )
    assert run("to-gguf", out, "-o", tmp_path / "again.gguf", "--type", "q8_0", "--allow-requantize", "-q")[0] == 0


def test_plan_prints_without_writing(small_model, tmp_path):
    code, output = run("plan", small_model, "--type", "q4_k", "--json")
    assert code == 0
    summary = json.loads(output)
    assert summary["type"] == "q4_k_m" and summary["output"] is None
    assert not list(tmp_path.glob("*.gguf"))
