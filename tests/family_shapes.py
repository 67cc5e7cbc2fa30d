"""Small random-folder shapes of the families added by issue 11, each chosen so the family's own step is exercised:
gemma3 with 12 layers (two global layers) and a 32-token window under 100 tokens, phi3 with LongRoPE and an original
context of 64 under a longer one, smollm3 with 8 layers (two without rope), qwen3moe with 8 experts top-3, olmoe with
8 experts top-2. Build one with `qconv.samples.synthetic.build_random_model(folder, **FAMILY_SHAPES[name])`."""

from __future__ import annotations

N_TOKENS = 100  # past gemma3's window and phi3's original context

FAMILY_SHAPES: dict[str, dict] = {
    "gemma3": dict(
        arch="gemma3", hidden=64, n_layers=12, n_heads=4, n_kv_heads=2, head_dim=32, ffn=128, vocab=384, tied=True,
        sliding_window=32,
    ),
    "smollm3": dict(arch="smollm3", hidden=64, n_layers=8, n_heads=4, n_kv_heads=2, ffn=128, vocab=384, tied=True),
    "phi3": dict(
        arch="phi3", hidden=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn=128, vocab=384, context_length=256,
        rope_scaling={
            "rope_type": "longrope",
            "long_factor": [1.0 + 0.5 * i for i in range(8)],
            "short_factor": [1.0 + 0.05 * i for i in range(8)],
        },
        extra_config={"original_max_position_embeddings": 64},
    ),
    "qwen3moe": dict(
        arch="qwen3moe", hidden=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=32, ffn=128, expert_ffn=48,
        n_experts=8, n_experts_used=3, vocab=384,
    ),
    "olmoe": dict(
        arch="olmoe", hidden=64, n_layers=3, n_heads=4, n_kv_heads=4, ffn=48, n_experts=8, n_experts_used=2, vocab=384,
    ),
}  # fmt: skip


def multimodal_gemma3_folder(text, folder, layout: str = "transformers5"):
    """A Gemma3ForConditionalGeneration folder around the random gemma3 text folder `text`: its weights under the
    language model's prefix of transformers 4.x ("transformers4") or 5.x, plus a vision tower and a projector."""
    import json
    import shutil

    import numpy as np

    from qconv.formats.safetensors_stream import SafetensorsSource
    from qconv.samples.safetensors_write import TensorEntry, write_safetensors

    folder.mkdir()
    for path in text.iterdir():
        if path.name not in ("config.json", "model.safetensors"):
            shutil.copy(path, folder / path.name)
    text_config = json.loads((text / "config.json").read_text())
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "text_config": {k: v for k, v in text_config.items() if k != "architectures"},
              "vision_config": {"hidden_size": 8}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    prefix = "language_model.model." if layout == "transformers4" else "model.language_model."
    vision = "vision_tower." if layout == "transformers4" else "model.vision_tower."
    with SafetensorsSource(text) as st:
        values = {name.replace("model.", prefix, 1): st.read_f32(name) for name in st.entries}
    values[vision + "vision_model.embeddings.patch_embedding.weight"] = np.ones((8, 3), np.float32)
    values["multi_modal_projector.mm_input_projection_weight"] = np.ones((8, 64), np.float32)
    entries = [TensorEntry(n, "F32", v.shape) for n, v in values.items()]
    write_safetensors(folder / "model.safetensors", entries, lambda e: iter([values[e.name]]))
    return folder
