"""Issue 3 acceptance: our q4_k_m, q3_k_m and q2_k files are at least as accurate as llama.cpp's files of the same
names at the same size, measured with llama.cpp as the runtime, on the sample and on its rotated variant."""

from __future__ import annotations

import pytest

from tests.bench.quant_quality import compare, model_folder
from tests.conftest import requires_llama_cpp

pytestmark = [pytest.mark.reference, requires_llama_cpp]


@pytest.mark.parametrize("model", ["smollm2", "smollm2-rotated"])
def test_kld_no_worse_than_llama_cpp(model, tmp_path):
    rows = compare(model_folder(model), ["q4_k_m", "q3_k_m", "q2_k"], 512, tmp_path)
    for type_name in ("q4_k_m", "q3_k_m", "q2_k"):
        ours, ref = (next(r for r in rows if r["type"] == type_name and r["tool"] == t) for t in ("qconv", "llama.cpp"))
        print(f"{model} {type_name}: KLD {ours['kld']:.4f} vs {ref['kld']:.4f}, size {ours['size']} vs {ref['size']}")
        assert ours["size"] <= 1.01 * ref["size"]
        assert ours["kld"] <= 1.02 * ref["kld"], f"{type_name}: mean KLD {ours['kld']:.4f} > 1.02 x {ref['kld']:.4f}"
