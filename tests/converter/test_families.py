"""The families of issue 11 without llama.cpp: config refusals (one line, before any output exists), the shapes and
names the architecture table implies, multimodal Gemma 3 folders, expert counts, per-expert importance."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from qconv.converter.convert import ConvertOptions, convert_to_gguf, make_plan_only
from qconv.formats.errors import FormatError
from qconv.formats.gguf_read import read_gguf
from qconv.formats.hf_config import read_model_spec
from qconv.formats.imatrix import ImportanceMatrix, read_imatrix, write_imatrix
from qconv.samples.synthetic import build_random_model
from tests.family_shapes import FAMILY_SHAPES, multimodal_gemma3_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    built = {}

    def build(family, **changes):
        key = (family, json.dumps(changes, sort_keys=True))
        if key not in built:
            shape = {**FAMILY_SHAPES[family], "dtype": "f32", **changes}
            built[key] = build_random_model(tmp_path_factory.mktemp(family), **shape)
        return built[key]

    return build


def _edit_config(folder, out, **changes):
    """A copy of the folder with changes to its config.json (None removes a key)."""
    out.mkdir(parents=True)
    for path in folder.iterdir():
        if path.name != "config.json":
            shutil.copy(path, out / path.name)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (out / "config.json").write_text(json.dumps(config))
    return out


REFUSALS = [
    ("gemma3", {"attn_logit_softcapping": 50.0}, "'attn_logit_softcapping' is 50.0"),
    ("gemma3", {"query_pre_attn_scalar": 64}, "'query_pre_attn_scalar' is 64"),
    ("gemma3", {"layer_types": ["full_attention"] * 12}, "'layer_types' is not llama.cpp's gemma3 pattern"),
    ("gemma3", {"layer_types": None, "sliding_window_pattern": 4}, "'sliding_window_pattern' is 4"),
    ("gemma3", {"hidden_activation": "gelu"}, "'hidden_activation' is 'gelu'"),
    ("smollm3", {"no_rope_layer_interval": 3}, "'no_rope_layer_interval' is 3"),
    ("smollm3", {"no_rope_layers": [1] * 8}, "'no_rope_layers' is"),
    ("phi3", {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_scaling type 'yarn' is not supported"),
    ("phi3", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling type 'dynamic'"),
    ("qwen3moe", {"norm_topk_prob": False}, "'norm_topk_prob' is False"),
    ("qwen3moe", {"mlp_only_layers": [1]}, "'mlp_only_layers' is [1]"),
    ("qwen3moe", {"decoder_sparse_step": 2}, "'decoder_sparse_step' is 2"),
    ("qwen3moe", {"shared_expert_intermediate_size": 64}, "'shared_expert_intermediate_size' is 64"),
    ("olmoe", {"norm_topk_prob": True}, "'norm_topk_prob' is True"),
    ("olmoe", {"clip_qkv": 8.0}, "'clip_qkv' is 8.0"),
    ("olmoe", {"num_key_value_heads": 2}, "'num_key_value_heads' is 2"),
]


@pytest.mark.parametrize("family, changes, message", REFUSALS, ids=lambda v: v if isinstance(v, str) else None)
def test_departures_from_llama_cpp_are_refused_before_writing(folders, tmp_path, family, changes, message):
    folder = _edit_config(folders(family), tmp_path / "edited", **changes)
    out = tmp_path / "out.gguf"
    with pytest.raises(FormatError) as e:
        convert_to_gguf(folder, out, "f32", progress=False)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not out.exists() and not any(p.name.startswith(".out.gguf") for p in tmp_path.iterdir())


def test_expected_shapes_follow_the_rows(folders):
    spec = read_model_spec(folders("phi3"))
    shapes = spec.expected_shapes()
    assert shapes["model.layers.0.self_attn.qkv_proj.weight"] == (64 + 2 * 32, 64)
    assert shapes["model.layers.0.mlp.gate_up_proj.weight"] == (256, 64)
    assert spec.rope_scaling["rope_type"] == "longrope" and spec.original_context_length == 64
    spec = read_model_spec(folders("qwen3moe"))
    shapes = spec.expected_shapes()
    assert shapes["model.layers.2.mlp.experts.7.down_proj.weight"] == (64, 48)
    assert shapes["model.layers.2.mlp.gate.weight"] == (8, 64)
    assert "model.layers.0.mlp.experts.8.up_proj.weight" not in shapes
    spec = read_model_spec(folders("olmoe"))
    assert spec.expected_shapes()["model.layers.0.self_attn.k_norm.weight"] == (64,)  # full width
    spec = read_model_spec(folders("gemma3"))
    assert spec.expected_shapes()["model.layers.11.post_feedforward_layernorm.weight"] == (64,)
    assert (spec.sliding_window, spec.rope_theta, spec.rope_theta_swa) == (32, 1_000_000.0, 10_000.0)


def test_gguf_tensors_and_keys(folders, tmp_path):
    out = convert_to_gguf(folders("qwen3moe"), tmp_path / "moe.gguf", "f32", progress=False).out_path
    with read_gguf(out) as g:
        assert g.tensors["blk.1.ffn_gate_exps.weight"].shape == (8, 48, 64)
        assert g.tensors["blk.1.ffn_down_exps.weight"].shape == (8, 64, 48)
        assert g.tensors["blk.1.ffn_gate_inp.weight"].shape == (8, 64)
        meta = g.metadata
        assert (meta["qwen3moe.expert_count"], meta["qwen3moe.expert_used_count"]) == (8, 3)
        assert meta["qwen3moe.expert_feed_forward_length"] == 48
    out = convert_to_gguf(folders("phi3"), tmp_path / "phi3.gguf", "f32", progress=False).out_path
    with read_gguf(out) as g:
        assert g.tensors["blk.0.attn_qkv.weight"].shape == (128, 64)
        assert g.tensors["blk.0.ffn_up.weight"].shape == (256, 64)
        assert g.tensors["rope_factors_long.weight"].shape == (8,)
        assert g.metadata["phi3.rope.scaling.original_context_length"] == 64
        assert g.metadata["phi3.attention.sliding_window"] == 0
        assert abs(g.metadata["phi3.rope.scaling.attn_factor"] - np.sqrt(1 + np.log(4) / np.log(64))) < 1e-6


def test_gemma3_norms_are_stored_plus_one(folders, tmp_path):
    folder = folders("gemma3")
    out = convert_to_gguf(folder, tmp_path / "g.gguf", "f32", progress=False).out_path
    from qconv.formats.safetensors_stream import SafetensorsSource

    with read_gguf(out) as g, SafetensorsSource(folder) as st:
        assert g.metadata["gemma3.attention.sliding_window"] == 32
        assert g.metadata["gemma3.rope.freq_base_swa"] == 10_000.0
        for hf, name in [("model.layers.3.self_attn.q_norm.weight", "blk.3.attn_q_norm.weight"),
                         ("model.layers.3.pre_feedforward_layernorm.weight", "blk.3.ffn_norm.weight"),
                         ("model.norm.weight", "output_norm.weight")]:  # fmt: skip
            stored = g.tensor_data(name).view(np.float32).copy()
            np.testing.assert_allclose(stored, st.read_f32(hf) + 1)
        assert "output.weight" not in g.tensors  # tied


@pytest.mark.parametrize("layout", ["transformers4", "transformers5"])
def test_gemma3_multimodal_folder_converts_its_text_model(folders, tmp_path, capfd, layout):
    text = folders("gemma3")
    reference = convert_to_gguf(text, tmp_path / "text.gguf", "f32", progress=False).out_path
    folder = multimodal_gemma3_folder(text, tmp_path / "mm", layout)
    out = convert_to_gguf(folder, tmp_path / "mm.gguf", "f32", progress=False).out_path
    notice = capfd.readouterr().err
    assert "skipping 2 tensors of the vision tower and multi_modal_projector" in notice
    with read_gguf(out) as g, read_gguf(reference) as r:
        assert set(g.tensors) == set(r.tensors)
        for name in r.tensors:
            assert g.tensor_data(name).tobytes() == r.tensor_data(name).tobytes()


def test_an_expert_count_the_checkpoint_contradicts_is_one_line(folders, tmp_path):
    folder = _edit_config(folders("olmoe"), tmp_path / "ten", num_experts=10)
    with pytest.raises(FormatError, match=r"model.safetensors: tensor 'model.layers.0.mlp.experts.N.gate_proj.weight' "
                       r"has 8 experts, config.json's num_experts is 10$"):  # fmt: skip
        convert_to_gguf(folder, tmp_path / "out.gguf", "f32", progress=False)
    folder = _edit_config(folders("olmoe"), tmp_path / "six", num_experts=6)
    with pytest.raises(FormatError, match=r"model.safetensors: tensor 'model.layers.0.mlp.experts.N.gate_proj.weight' "
                       r"has 8 experts, config.json's num_experts is 6$"):  # fmt: skip
        convert_to_gguf(folder, tmp_path / "out.gguf", "f32", progress=False)


def test_plan_of_moe_keeps_the_router_f32(folders):
    plan = make_plan_only(folders("qwen3moe"), ConvertOptions(type_name="q4_0")).plan
    types = {c.name: (c.ggml_type.name, c.reason) for c in plan.choices}
    assert types["blk.0.ffn_gate_inp.weight"][0] == "F32" and "router" in types["blk.0.ffn_gate_inp.weight"][1]
    assert types["blk.0.attn_v.weight"][0] == "Q8_0"  # llama.cpp's 8-expert bump
    assert types["blk.0.ffn_up_exps.weight"][0] == "Q4_0"


def test_per_expert_importance_is_applied_per_expert(folders, tmp_path):
    from qconv.runtime import quants

    folder = folders("qwen3moe")
    n_experts, width, name = 8, 64, "blk.1.ffn_up_exps.weight"
    sums = np.random.default_rng(0).uniform(0.01, 10.0, size=(n_experts, width)).astype(np.float32)
    counts = np.arange(1, n_experts + 1, dtype=np.float32)
    path = write_imatrix(tmp_path / "moe.imatrix.gguf",
                         ImportanceMatrix(sums={name: sums.reshape(-1)}, expert_counts={name: counts}))  # fmt: skip
    back = read_imatrix(path)
    np.testing.assert_allclose(back.mean_squares(name), sums / counts[:, None], rtol=1e-6)
    options = ConvertOptions(type_name="q4_0", imatrix=path, tensor_types=(r"ffn_up_exps=q4_0",))
    out = convert_to_gguf(folder, tmp_path / "q.gguf", options, progress=False).out_path
    reference = convert_to_gguf(folder, tmp_path / "f.gguf", "f32", progress=False).out_path
    with read_gguf(out) as g, read_gguf(reference) as r:
        weights = r.tensor_data(name).view(np.float32).reshape(n_experts, 48, width).copy()
        stored = np.array(g.tensor_data(name)).reshape(n_experts, -1)
        for expert in range(n_experts):
            own = quants.quantize(weights[expert], "Q4_0", importance=sums[expert] / counts[expert])
            np.testing.assert_array_equal(stored[expert], own.reshape(-1))
        first = quants.quantize(weights[5], "Q4_0", importance=sums[0] / counts[0])
        assert not np.array_equal(stored[5], first.reshape(-1))  # the experts' importance rows differ


def test_imatrix_with_the_wrong_expert_count_is_refused(folders, tmp_path):
    name = "blk.0.ffn_down_exps.weight"
    path = write_imatrix(tmp_path / "bad.gguf", ImportanceMatrix(
        sums={name: np.ones(4 * 48, np.float32)}, expert_counts={name: np.ones(4, np.float32)}))  # fmt: skip
    with pytest.raises(FormatError, match="has 192 values, the tensor's rows have 8 experts x 48"):
        make_plan_only(folders("qwen3moe"), ConvertOptions(type_name="q4_0", imatrix=path))


def test_sample_random_builds_every_family(tmp_path):
    from tests.qconv_cli import run

    for family in FAMILY_SHAPES:
        code, output = run("sample", "random", "--arch", family, "--layers", "2", "--hidden", "64", "--heads", "4",
                           "--kv-heads", "4", "--ffn", "64", "--vocab", "300", "-o", tmp_path / family)  # fmt: skip
        assert code == 0, output
        assert read_model_spec(tmp_path / family).arch.family == family
