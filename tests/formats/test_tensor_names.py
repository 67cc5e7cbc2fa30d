import numpy as np
import pytest

from qconv.formats.errors import FormatError
from qconv.formats.tensor_names import gguf_name, hf_name, permute_rope_rows, rope_permute_heads, unpermute_rope_rows


def test_names_round_trip():
    for hf in [
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.layers.17.mlp.down_proj.weight",
        "model.layers.3.self_attn.k_norm.weight",
        "model.layers.0.self_attn.v_proj.bias",
    ]:
        assert hf_name(gguf_name(hf)) == hf
    assert gguf_name("model.layers.12.self_attn.q_proj.weight") == "blk.12.attn_q.weight"
    assert gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None


def test_unknown_name():
    with pytest.raises(FormatError, match="vision_tower"):
        gguf_name("model.vision_tower.weight")


def test_permuted_tensors():
    assert rope_permute_heads("blk.2.attn_q.weight") == "n_heads"
    assert rope_permute_heads("blk.2.attn_k.weight") == "n_kv_heads"
    assert rope_permute_heads("blk.2.attn_v.weight") is None


def test_permutation_pairs_halves():
    head_dim, n_heads = 8, 2
    w = np.arange(n_heads * head_dim, dtype=np.float32)[:, None]
    p = permute_rope_rows(w, n_heads)[:, 0]
    # within each head, HF row j (first half) and j + head_dim/2 become adjacent rows 2j, 2j+1
    assert p[:8].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert p[8:].tolist() == [8, 12, 9, 13, 10, 14, 11, 15]
    np.testing.assert_array_equal(unpermute_rope_rows(permute_rope_rows(w, n_heads), n_heads), w)
