import gguf
import pytest

from qconv.converter.plan import Position, make_plan, parse_tensor_type, parse_type, use_more_bits
from qconv.formats.errors import FormatError

T = gguf.GGMLQuantizationType


def shapes(n_layers=8, hidden=512, ffn=1024, kv=128, tied=False):
    s = {"token_embd.weight": (1000, hidden)}
    for i in range(n_layers):
        s |= {
            f"blk.{i}.attn_norm.weight": (hidden,),
            f"blk.{i}.attn_q.weight": (hidden, hidden),
            f"blk.{i}.attn_k.weight": (kv, hidden),
            f"blk.{i}.attn_v.weight": (kv, hidden),
            f"blk.{i}.attn_output.weight": (hidden, hidden),
            f"blk.{i}.ffn_gate.weight": (ffn, hidden),
            f"blk.{i}.ffn_up.weight": (ffn, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, ffn),
        }
    s["output_norm.weight"] = (hidden,)
    if not tied:
        s["output.weight"] = (1000, hidden)
    return s


def types(plan):
    return {c.name: c.ggml_type for c in plan.choices}


def test_aliases_and_case():
    assert parse_type("Q4_K") == "q4_k_m" and parse_type("q3_k") == "q3_k_m" and parse_type("q5_K_S") == "q5_k_s"
    with pytest.raises(FormatError) as e:
        parse_type("q4_kk")
    assert "q4_k_m" in str(e.value) and "iq4_nl" in str(e.value)


def test_q4_k_m_mixture():
    t = types(make_plan(shapes(), "q4_k_m", n_layers=8, n_gqa=4))
    assert t["output.weight"] == T.Q6_K and t["token_embd.weight"] == T.Q4_K
    assert t["blk.0.ffn_down.weight"] == T.Q6_K and t["blk.1.ffn_down.weight"] == T.Q4_K  # more bits: first eighth
    assert t["blk.7.attn_v.weight"] == T.Q6_K and t["blk.0.attn_q.weight"] == T.Q4_K
    assert t["blk.0.attn_norm.weight"] == T.F32


def test_tied_embedding_is_the_head():
    t = types(make_plan(shapes(tied=True), "q4_k_m", n_layers=8))
    assert t["token_embd.weight"] == T.Q6_K


def test_fallbacks_for_576_wide_rows():
    plan = make_plan(shapes(hidden=576, ffn=1536, kv=192), "q2_k", n_layers=8)
    t = types(plan)
    assert t["blk.0.attn_q.weight"] == T.Q4_0  # q2_k falls back to q4_0
    assert t["blk.0.ffn_down.weight"] == T.Q3_K  # 1536 is a multiple of 256
    assert len(plan.fallbacks()) > 0 and all("576" in c.reason for c in plan.fallbacks())
    t = types(make_plan(shapes(hidden=576, ffn=1536, kv=192), "q6_k", n_layers=8))
    assert t["blk.0.attn_q.weight"] == T.Q8_0
    t = types(make_plan({"odd.weight": (8, 48)}, "q8_0"))
    assert t["odd.weight"] == T.F16


def test_overrides_and_pure():
    plan = make_plan(shapes(), "q4_k_m", n_layers=8, overrides=[parse_tensor_type(r"attn_v=q8_0")])
    assert types(plan)["blk.3.attn_v.weight"] == T.Q8_0
    t = types(make_plan(shapes(), "q4_k_m", n_layers=8, pure=True))
    assert t["output.weight"] == T.Q4_K and t["blk.0.ffn_down.weight"] == T.Q4_K
    with pytest.raises(FormatError, match="REGEX=TYPE"):
        parse_tensor_type("attn_v")
    with pytest.raises(FormatError, match="unknown type 'q9'"):
        parse_tensor_type("attn_v=q9")


def test_use_more_bits_matches_llama_cpp_pattern():
    picked = [i for i in range(32) if use_more_bits(Position(i, 32, 1, False))]
    assert picked == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


def test_warns_when_a_mixture_is_no_smaller_than_a_simpler_type():
    from qconv.converter.report_plan import plan_summary, plan_table

    small_rows = shapes(hidden=576, ffn=1536, kv=192, tied=True)
    plan = make_plan(small_rows, "q3_k_m", n_layers=8)
    assert plan_summary(plan)["no_smaller_than"]["type"] == "q4_0"
    assert "no smaller than --type q4_0" in plan_table(plan)
    assert plan_summary(make_plan(shapes(), "q3_k_m", n_layers=8))["no_smaller_than"] is None
