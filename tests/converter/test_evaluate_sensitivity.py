"""qconv analyze and --type auto on a small random model: errors fall with bits, the knapsack keeps to its budget,
its overrides are what the converter writes, and the file records the choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qconv.converter import analyze as an
from qconv.converter.auto_types import choose_types
from qconv.formats.errors import FormatError
from tests.conftest import have

needs_runtime = pytest.mark.skipif(not have("qconv.runtime.model"), reason="the runtime's Model is not built yet")
SHAPE = dict(arch="llama", hidden=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512, vocab=512)


@pytest.fixture(scope="module")
def folder(random_model_factory):
    return random_model_factory(**SHAPE)


@pytest.fixture(scope="module")
def errors_only(folder):
    return an.analyze(folder, an.AnalyzeOptions(kld=False, threads=2))


def test_errors_fall_with_more_bits(errors_only):
    order = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0"]  # one family: fewer bits, more error
    assert len(errors_only["tensors"]) == 2 * 7 + 2  # the matmuls, the head and the embedding
    for name, e in errors_only["tensors"].items():
        errs = [e["options"][t]["error"] for t in order]
        assert errs == sorted(errs, reverse=True), name
        sizes = [e["options"][t]["bytes"] for t in order]
        assert sizes == sorted(sizes), name


def test_knapsack_keeps_to_the_budget_and_improves_with_size(errors_only):
    previous = None
    for bpw in (3.5, 4.5, 5.5, 7.0):
        choice = choose_types(errors_only, target_bpw=bpw)
        assert choice.bits_per_weight <= bpw + 1e-9
        if previous is not None:
            assert choice.predicted_kld <= previous
        previous = choice.predicted_kld
    with pytest.raises(FormatError, match="cheapest candidate"):
        choose_types(errors_only, target_bpw=1.0)
    with pytest.raises(FormatError, match="exactly one"):
        choose_types(errors_only)


def test_overrides_are_what_the_plan_writes(errors_only, folder):
    from qconv.converter.convert import ConvertOptions, make_plan_only

    choice = choose_types(errors_only, target_bpw=4.8)
    options = ConvertOptions(type_name=choice.base_type, pure=True, tensor_types=choice.tensor_type_overrides())
    plan = make_plan_only(folder, options).plan
    planned = {c.name: c.ggml_type.name.lower() for c in plan.choices if c.name in choice.types}
    assert planned == choice.types
    assert plan.nbytes == choice.nbytes


@needs_runtime
def test_group_trials_and_auto_file(folder, tmp_path):
    import gguf

    from qconv.converter.auto_types import convert_auto

    result = an.analyze(folder, an.AnalyzeOptions(threads=2, max_tokens=256, ctx=128, bands=2))
    groups = result["groups"]
    assert len(groups) == 7 * 2 + 2 and all(g["kld"] >= 0 for g in groups)
    assert [g["kld"] for g in groups] == sorted((g["kld"] for g in groups), reverse=True)
    out = tmp_path / "auto.gguf"
    choice, measured = convert_auto(folder, out, target_bpw=4.5, threads=2, analysis=result, kld_tokens=256)
    reader = gguf.GGUFReader(str(out))
    recorded = json.loads(bytes(reader.fields["qconv.auto.types"].parts[-1]).decode())
    assert recorded == choice.types
    assert float(reader.fields["qconv.auto.measured_kld"].parts[-1][0]) == pytest.approx(measured, rel=1e-6)
    written = {t.name: t.tensor_type.name.lower() for t in reader.tensors}
    assert all(written[n] == t for n, t in choice.types.items())
    shapes = {n: e["shape"] for n, e in result["tensors"].items()}
    assert all(list(reversed(t.shape.tolist())) == shapes[t.name] for t in reader.tensors if t.name in shapes)
    from qconv.runtime.model import Model

    assert Model(out, threads=1, ctx=32).logits([1, 2, 3]).shape == (3, SHAPE["vocab"])
    assert np.isfinite(measured) and measured >= 0
