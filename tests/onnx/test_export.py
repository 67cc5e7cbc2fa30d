"""to-onnx on small random-weight folders of each family: graph validity, fusion, numerics, cache, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from qconv.converter.onnx_cli import to_onnx
from qconv.converter.onnx_export import OPSETS
from qconv.runtime.onnx_backend import OnnxModel
from tests.onnx.conftest import (
    FAMILIES,
    export,
    float_initializer_shapes,
    linear_shapes,
    matmulnbits_shapes,
    optimized_graph,
)
from tests.onnx.numpy_reference import forward

IDS = [5, 300, 17, 42, 260, 511, 3, 99, 128, 77, 250, 1, 400, 64, 33, 8]


@pytest.fixture(
    scope="module", params=[(f, o) for f in sorted(FAMILIES) for o in OPSETS], ids=lambda p: f"{p[0]}-opset{p[1]}"
)
def exported(request, family_folder, tmp_path_factory):
    """Each family at each opset: 23's RMSNormalization/RotaryEmbedding/Attention nodes and 21's spelled-out
    graph face the same checks (numpy reference, cache, padding, fusion)."""
    family, opset = request.param
    model_dir = family_folder(family)
    out = tmp_path_factory.mktemp("onnx") / f"{family}-{opset}"
    return model_dir, export(model_dir, out, bits=4, block_size=32, opset=opset)


def test_check_model_full(exported):
    _, folder = exported
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    names = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "genai_config.json", "tokenizer.json", "tokenizer.gguf", "tokenizer_config.json"} <= names
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"


def assert_fused_weights(graph: onnx.ModelProto, expected: list[tuple[int, int]]) -> None:
    """The optimized graph has one MatMulNBits of each expected K x N, no weight DequantizeLinear left, and no
    float copy of any quantized weight (K x N, or the N x K the fusion could have left)."""
    assert matmulnbits_shapes(graph) == sorted(expected)
    assert not [n for n in graph.graph.node if n.op_type == "DequantizeLinear" and n.output[0].endswith("_dq")]
    assert not float_initializer_shapes(graph) & (set(expected) | {s[::-1] for s in expected})


def per_layer_kernels(model_dir, fused: bool) -> int:
    """MatMulNBits per layer: q, k, v, o, gate, up, down; q/k/v and gate/up as one each when fused (--fuse-linear,
    or a checkpoint that stores them fused, Phi-3's)."""
    from qconv.converter.onnx_families import decoder_layout
    from qconv.formats.hf_config import read_model_spec

    stored_fused = decoder_layout(read_model_spec(model_dir)).stored_fused("self_attn.qkv_proj")
    return 4 if fused or stored_fused else 7


def test_every_linear_layer_fuses_to_matmulnbits(exported, tmp_path):
    """The default: one MatMulNBits per linear layer (q, k, v, o, gate, up, down of each layer, and the head)."""
    model_dir, folder = exported
    expected = linear_shapes(model_dir)
    n_layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    assert len(expected) == n_layers * per_layer_kernels(model_dir, False) + 1
    assert_fused_weights(optimized_graph(folder, tmp_path), expected)


def test_fuse_linear_groups_and_keeps_the_logits(exported, tmp_path):
    """--fuse-linear: one MatMulNBits per q/k/v and gate/up group, the same quantized values, the same logits."""
    model_dir, folder = exported
    opset = onnx.load(str(folder / "model.onnx"), load_external_data=False).opset_import[0].version
    fused = export(model_dir, tmp_path / "fused", bits=4, block_size=32, fuse_linear=True, opset=opset)
    expected = linear_shapes(model_dir, fused=True)
    n_layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    assert len(expected) == n_layers * per_layer_kernels(model_dir, True) + 1
    assert_fused_weights(optimized_graph(fused, tmp_path), expected)
    ours = OnnxModel(fused, threads=2, accuracy_level=0).logits(IDS)
    assert np.abs(ours - OnnxModel(folder, threads=2, accuracy_level=0).logits(IDS)).max() < 1e-4
    assert np.abs(ours - forward(fused, IDS, model_dir)).max() < 1e-3
    with_cache = OnnxModel(fused, threads=2, accuracy_level=0)
    assert with_cache.generate_ids(IDS[:5], 8, use_cache=True) == with_cache.generate_ids(IDS[:5], 8, use_cache=False)


def test_logits_match_numpy_reference(exported):
    model_dir, folder = exported
    model = OnnxModel(folder, threads=2, accuracy_level=0)
    ours = model.logits(IDS)
    reference = forward(folder, IDS, model_dir)
    assert ours.shape == (len(IDS), reference.shape[1])
    # float32 against float64 differs by about 1e-6 here; a rope-free layer rotated, or a query scale off by 10%,
    # moves these small random models' logits by about 1e-3
    assert np.abs(ours - reference).max() < 1e-4


def test_cache_equals_recompute(exported):
    _, folder = exported
    model = OnnxModel(folder, threads=2, accuracy_level=0)
    with_cache = model.generate_ids(IDS[:5], 12, use_cache=True)
    assert with_cache == model.generate_ids(IDS[:5], 12, use_cache=False)
    # chunked prefill through the cache gives the logits of one pass
    model.reset()
    first = model.eval(IDS[:7])
    rest = model.eval(IDS[7:])
    assert np.abs(np.concatenate([first, rest]) - model.logits(IDS)).max() < 1e-4


def test_padding_mask_and_batch(exported):
    """A left-padded batch row gives the same logits as the unpadded sequence (attention_mask and positions)."""
    _, folder = exported
    model = OnnxModel(folder, threads=2, accuracy_level=0)
    spec = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    short = IDS[:6]
    pad = 3
    ids = np.array([[0] * pad + short, IDS[: pad + len(short)]], dtype=np.int64)
    mask = np.array([[0] * pad + [1] * len(short), [1] * (pad + len(short))], dtype=np.int64)
    positions = np.array([[0] * pad + list(range(len(short))), list(range(pad + len(short)))], dtype=np.int64)
    empty = np.zeros((2, spec["num_key_value_heads"], 0, spec["head_size"]), np.float32)
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    for i in range(spec["num_hidden_layers"]):
        feed[f"past_key_values.{i}.key"] = feed[f"past_key_values.{i}.value"] = empty
    logits = model.session.run(["logits"], feed)[0]
    assert np.abs(logits[0, pad:] - model.logits(short)).max() < 1e-4
    assert np.abs(logits[1] - model.logits(IDS[: pad + len(short)])).max() < 1e-4


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, True), (8, False)])
def test_other_widths_fuse_and_match(random_model_factory, tmp_path, bits, symmetric):
    model_dir = random_model_factory(**FAMILIES["llama"])
    folder = export(model_dir, tmp_path / "out", bits=bits, block_size=16, head_bits=bits, symmetric=symmetric)
    graph = optimized_graph(folder, tmp_path)
    assert sum(n.op_type == "MatMulNBits" for n in graph.graph.node) == len(linear_shapes(model_dir))
    ours = OnnxModel(folder, threads=2, accuracy_level=0).logits(IDS)
    assert np.abs(ours - forward(folder, IDS, model_dir)).max() < 1e-3


def test_external_data(random_model_factory, tmp_path):
    model_dir = random_model_factory(**FAMILIES["qwen2"])
    folder = export(model_dir, tmp_path / "out", external_data=True, block_size=64)
    assert (folder / "model.onnx.data").stat().st_size > (folder / "model.onnx").stat().st_size
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    ours = OnnxModel(folder, threads=2, accuracy_level=0).logits(IDS)
    assert np.abs(ours - forward(folder, IDS, model_dir)).max() < 1e-3


def test_rope_scaling_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from qconv.converter.onnx_export import rope_inv_freq
    from qconv.formats.hf_config import read_model_spec

    scalings = [
        {"rope_type": "linear", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
    ]
    for scaling in scalings:
        config = LlamaConfig(
            hidden_size=512,
            num_attention_heads=8,
            rope_theta=500000.0,
            max_position_embeddings=32768,
            rope_scaling=dict(scaling),
        )
        theirs, factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, torch.device("cpu"))
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            cfg = config.to_dict() | {
                "architectures": ["LlamaForCausalLM"],
                "num_hidden_layers": 1,
                "intermediate_size": 64,
                "vocab_size": 32,
            }
            (Path(tmp) / "config.json").write_text(json.dumps(cfg))
            ours, our_factor = rope_inv_freq(read_model_spec(Path(tmp)))
        assert np.allclose(ours, theirs.numpy(), rtol=1e-5), scaling["rope_type"]
        assert our_factor == pytest.approx(factor, rel=1e-6)


def test_bad_bits_and_block_size_list_valid_ones(random_model_factory, tmp_path):
    model_dir = random_model_factory(**FAMILIES["llama"])
    runner = CliRunner()
    result = runner.invoke(to_onnx, [str(model_dir), "-o", str(tmp_path / "a"), "--bits", "3"])
    assert result.exit_code != 0 and "'4'" in result.output and "'8'" in result.output
    result = runner.invoke(to_onnx, [str(model_dir), "-o", str(tmp_path / "b"), "--block-size", "48"])
    assert result.exit_code != 0 and all(f"'{b}'" in result.output for b in (16, 32, 64, 128))
    from qconv.converter.onnx_export import OnnxOptions, export_onnx
    from qconv.formats.errors import FormatError

    with pytest.raises(FormatError, match="valid: 16, 32, 64, 128"):
        export_onnx(model_dir, tmp_path / "c", OnnxOptions(block_size=24))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_unsupported_architecture_writes_nothing(random_model_factory, tmp_path):
    model_dir = random_model_factory(**FAMILIES["llama"])
    other = tmp_path / "gpt2"
    other.mkdir()
    for f in model_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (other / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    result = CliRunner().invoke(to_onnx, [str(other), "-o", str(out)])
    assert result.exit_code == 1
    assert "GPT2LMHeadModel" in result.output and "LlamaForCausalLM" in result.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]  # no temporary folder left either


def test_non_empty_output_folder_is_refused(random_model_factory, tmp_path):
    model_dir = random_model_factory(**FAMILIES["llama"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(to_onnx, [str(model_dir), "-o", str(out), "--json"])
    assert result.exit_code == 1 and "not empty" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_json_summary(random_model_factory, tmp_path):
    model_dir = random_model_factory(**FAMILIES["qwen3"])
    result = CliRunner().invoke(to_onnx, [str(model_dir), "-o", str(tmp_path / "o"), "--json", "--bits", "8"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    from qconv.formats.hf_config import read_model_spec

    shapes = read_model_spec(model_dir).expected_shapes()
    linear = [n for n, s in shapes.items() if len(s) == 2 and n != "model.embed_tokens.weight"]
    assert summary["bits"] == 8 and summary["quantized_layers"] == len(linear) == 2 * 7 + 1
    assert summary["fuse_linear"] is False
    fused = CliRunner().invoke(to_onnx, [str(model_dir), "-o", str(tmp_path / "f"), "--json", "--fuse-linear"])
    assert fused.exit_code == 0, fused.output
    summary = json.loads(fused.output)
    assert summary["fuse_linear"] is True and summary["quantized_layers"] == 2 * 7 + 1
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "f" / "model.onnx")).metadata_props}
    assert meta["qconv.fuse_linear"] == "1"
    assert "--fuse-linear" in CliRunner().invoke(to_onnx, ["--help"]).output


def test_imatrix_weights_the_search(random_model_factory, tmp_path):
    """An importance matrix changes the scales, and lowers the importance-weighted error of a layer."""
    from onnx import numpy_helper

    from qconv.formats.hf_config import read_model_spec
    from qconv.formats.imatrix import ImportanceMatrix, write_imatrix
    from qconv.formats.safetensors_stream import SafetensorsSource
    from qconv.formats.tensor_names import gguf_name

    model_dir = random_model_factory(**FAMILIES["qwen2"])
    spec = read_model_spec(model_dir)
    rng = np.random.default_rng(3)
    sums = {
        gguf_name(name): (rng.random(shape[1]) ** 4 * 100).astype(np.float32)
        for name, shape in spec.expected_shapes().items()
        if len(shape) == 2 and name != "model.embed_tokens.weight"
    }
    imatrix = write_imatrix(tmp_path / "imatrix.gguf", ImportanceMatrix(sums, {n: 1.0 for n in sums}, ["test"], 1, 1))
    plain = export(model_dir, tmp_path / "plain", calibrate=False)
    weighted = export(model_dir, tmp_path / "weighted", imatrix=imatrix)
    stem = "model.layers.1.mlp.down_proj"
    with SafetensorsSource(model_dir) as source:
        w = source.read_f32(stem + ".weight").T.astype(np.float64)  # K x N
    importance = sums[gguf_name(stem + ".weight")].astype(np.float64)[:, None]

    def error(folder):
        arrays = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(folder / "model.onnx")).graph.initializer}
        from tests.onnx.numpy_reference import dequantize_kn

        deq = dequantize_kn(arrays[stem + "_q"], arrays[stem + "_scale"], arrays[stem + "_zp"], 32)
        return float((importance * (w - deq) ** 2).sum())

    assert error(weighted) < error(plain)

    def label(folder):
        return {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}["qconv.imatrix"]

    assert label(weighted) == str(imatrix)
    # without a head entry (llama-imatrix's default), the head's importance is measured and the rest kept
    del sums["output.weight"]
    headless = write_imatrix(tmp_path / "headless.gguf", ImportanceMatrix(sums, {n: 1.0 for n in sums}, ["t"], 1, 1))
    folder = export(model_dir, tmp_path / "headless", imatrix=headless)
    assert label(folder) == f"{headless} (head calibrated on the built-in calibration text)"
    result = CliRunner().invoke(to_onnx, [str(model_dir), "-o", str(tmp_path / "cli"), "--imatrix", str(imatrix), "-q"])
    assert result.exit_code == 0, result.output


def strict_size_bound(model_dir, bits: int, block: int, head_block: int, symmetric: bool) -> float:
    """bits/8 x every quantized parameter (the head at --bits too) + the scales and zero points as stored (one
    per block, the head's blocks at their own size, each matrix once) + float32 norms and biases."""
    import math

    from qconv.formats.hf_config import read_model_spec

    total = 0.0
    for name, shape in read_model_spec(model_dir).expected_shapes().items():
        n = math.prod(shape)
        if len(shape) == 1:
            total += 4 * n
            continue
        size = head_block if name in ("model.embed_tokens.weight", "lm_head.weight") else block
        total += n * bits / 8 + shape[0] * -(-shape[1] // size) * (4 + (0 if symmetric else bits / 8))
    return total


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # tied and untied head
@pytest.mark.parametrize("symmetric", [True, False])
def test_default_size_is_bits_times_parameters_plus_scales(random_model_factory, tmp_path, symmetric, family):
    """The defaults (head at --bits in blocks of 16) are within 10% of the strict bound."""
    model_dir = random_model_factory(**FAMILIES[family])
    folder = export(model_dir, tmp_path / "out", bits=4, block_size=32, symmetric=symmetric)
    size = (folder / "model.onnx").stat().st_size
    assert size / strict_size_bound(model_dir, 4, 32, 16, symmetric) < 1.10
    # the same count with every block at 32 is still within 10% (the head's smaller blocks are small change)
    assert size / strict_size_bound(model_dir, 4, 32, 32, symmetric) < 1.10


def test_calibration_runs_the_float_graph(random_model_factory, tmp_path):
    """The probe's importance for layer 0's q/k/v is the mean square of the first norm's output over the chunks,
    and every linear layer and the head have an entry."""
    from qconv.converter.calibrate import chunks_of
    from qconv.converter.onnx_calibrate import probe_importance
    from qconv.converter.sources import HFSource
    from qconv.runtime.tokenizer import Tokenizer

    model_dir = random_model_factory(**FAMILIES["llama"])
    text = tmp_path / "data.txt"
    text.write_text(" ".join(f"word{i % 97} and {i}" for i in range(600)))
    source = HFSource(model_dir)
    try:
        imatrix = probe_importance(source, [text], ctx=64, max_chunks=3)
        embed = source.safetensors.read_f32("model.embed_tokens.weight").astype(np.float64)
        gamma = source.safetensors.read_f32("model.layers.0.input_layernorm.weight").astype(np.float64)
        eps = source.spec.rms_eps
    finally:
        source.close()
    folder = export(model_dir, tmp_path / "out", calibrate=False)
    tokenizer = Tokenizer.from_gguf(folder / "tokenizer.gguf")
    chunks = chunks_of(tokenizer.encode(text.read_text(), add_special=False), 64, None)
    chunks = [chunks[int(i * len(chunks) / 3)] for i in range(3)]
    x = embed[np.concatenate(chunks)]
    normed = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gamma
    expected = (normed**2).mean(0)
    assert np.allclose(imatrix.mean_squares("blk.0.attn_q.weight"), expected, rtol=1e-4)
    assert np.array_equal(imatrix.sums["blk.0.attn_k.weight"], imatrix.sums["blk.0.attn_q.weight"])
    spec_names = {"output.weight"} | {f"blk.{i}.{r}.weight" for i in range(2) for r in (
        "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}  # fmt: skip
    assert set(imatrix.sums) == spec_names
    assert imatrix.chunk_count == 3 and imatrix.chunk_size == 64


def test_calibration_items_are_rendered_with_the_chat_template(smollm2_dir, tmp_path, monkeypatch):
    """A .jsonl calibration file holds prompt items: to-onnx renders them with the source's chat template and
    tokenizes its markers as the special tokens a chat feeds (as `qconv calibrate --data` does)."""
    import json

    from qconv.converter import onnx_calibrate
    from qconv.converter.sources import HFSource
    from qconv.runtime.tokenizer import Tokenizer

    items = tmp_path / "traffic.jsonl"
    items.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} + {i}?"}) + "\n" for i in range(40)))
    seen, chunks_of = [], onnx_calibrate.chunks_of
    monkeypatch.setattr(
        onnx_calibrate, "chunks_of", lambda tokens, *a: seen.append(list(tokens)) or chunks_of(tokens, *a)
    )
    source = HFSource(smollm2_dir)
    try:
        onnx_calibrate.probe_importance(source, [items], ctx=64, max_chunks=1)
    finally:
        source.close()
    folder = tmp_path / "tok"
    folder.mkdir()
    tokenizer = Tokenizer.from_gguf(_tokenizer_gguf(smollm2_dir, folder))
    im_start = tokenizer.encode("<|im_start|>", add_special=False, parse_special=True)
    assert len(im_start) == 1 and seen and seen[0].count(im_start[0]) >= 3 * 40  # system, user, assistant


def _tokenizer_gguf(model_dir, folder):
    from qconv.converter.onnx_export import write_tokenizer_gguf
    from qconv.converter.sources import HFSource

    source = HFSource(model_dir)
    try:
        write_tokenizer_gguf(source, folder / "tokenizer.gguf")
    finally:
        source.close()
    return folder / "tokenizer.gguf"


def test_calibrate_and_imatrix_options(random_model_factory, tmp_path):
    model_dir = random_model_factory(**FAMILIES["llama"])
    text = tmp_path / "data.txt"
    text.write_text(" ".join(f"word{i % 97} and {i}" for i in range(3000)))
    imatrix = tmp_path / "imatrix.gguf"
    imatrix.write_bytes(b"")
    both = CliRunner().invoke(
        to_onnx, [str(model_dir), "-o", str(tmp_path / "a"), "--imatrix", str(imatrix), "--calibrate", str(text)]
    )
    assert both.exit_code == 2 and "mutually exclusive" in both.output and not (tmp_path / "a").exists()
    result = CliRunner().invoke(
        to_onnx, [str(model_dir), "-o", str(tmp_path / "b"), "--calibrate", str(text), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["imatrix"] == f"calibrated on {text}"
    plain = CliRunner().invoke(to_onnx, [str(model_dir), "-o", str(tmp_path / "c"), "--no-calibrate", "--json"])
    assert json.loads(plain.output)["imatrix"] is None

    def meta_and_scales(folder):
        model = onnx.load(str(folder / "model.onnx"))
        scale = next(t for t in model.graph.initializer if t.name == "model.layers.0.mlp.down_proj_scale")
        return {p.key: p.value for p in model.metadata_props}, onnx.numpy_helper.to_array(scale)

    meta_b, scales_b = meta_and_scales(tmp_path / "b")
    meta_c, scales_c = meta_and_scales(tmp_path / "c")
    assert meta_b["qconv.imatrix"] == f"calibrated on {text}" and meta_c["qconv.imatrix"] == ""
    assert not np.array_equal(scales_b, scales_c)


@pytest.mark.parametrize("symmetric", [True, False])
def test_size_is_bits_times_parameters_plus_scales(random_model_factory, tmp_path, symmetric):
    """With the head at the same bits, the file is bits/8 x parameters + scales (+ zero points), within 10%."""
    import math

    from qconv.formats.hf_config import read_model_spec

    model_dir = random_model_factory(**FAMILIES["llama"])
    folder = export(model_dir, tmp_path / "out", bits=4, head_bits=4, block_size=32, symmetric=symmetric)
    params = sum(math.prod(s) for s in read_model_spec(model_dir).expected_shapes().values())
    expected = params * 4 / 8 + params / 32 * (4 + (0 if symmetric else 0.5))
    assert abs((folder / "model.onnx").stat().st_size / expected - 1) < 0.10
