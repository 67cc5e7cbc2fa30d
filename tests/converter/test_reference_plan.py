"""Our type mixtures equal llama.cpp's: quantize the same f32 GGUF with llama_model_quantize and compare types."""

from __future__ import annotations

import ctypes

import pytest

from qconv.converter.convert import ConvertOptions, convert_to_gguf, make_plan_only
from qconv.converter.plan import FILE_TYPES
from qconv.formats.gguf_read import read_gguf
from tests.conftest import requires_llama_cpp
from tests.llama_ref import quiet_stderr

pytestmark = [pytest.mark.reference, requires_llama_cpp]

MIXTURES = [t for t in FILE_TYPES if t not in ("f32", "f16", "bf16")]


def llama_cpp_types(src, dst, type_name) -> dict[str, str]:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(FILE_TYPES[type_name][0])
    params.nthread = 2
    with quiet_stderr():
        assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    with read_gguf(dst) as g:
        return {name: t.type_name for name, t in g.tensors.items()}


@pytest.fixture(scope="module", params=["smollm2", "random-gqa4"])
def f32_model(request, smollm2_dir, random_model_factory, tmp_path_factory):
    if request.param == "smollm2":
        folder = smollm2_dir  # 576-wide rows: the fallback paths
    else:
        folder = random_model_factory(
            arch="llama", hidden=512, n_layers=16, n_heads=8, n_kv_heads=2, ffn=1024, vocab=1024
        )
    out = tmp_path_factory.mktemp("plan") / f"{request.param}-f32.gguf"
    return convert_to_gguf(folder, out, "f32", progress=False).out_path


@pytest.mark.parametrize("type_name", MIXTURES)
def test_mixture_equals_llama_cpp(f32_model, tmp_path, type_name):
    expected = llama_cpp_types(f32_model, tmp_path / "ref.gguf", type_name)
    ours = {
        c.name: c.ggml_type.name for c in make_plan_only(f32_model, ConvertOptions(type_name=type_name)).plan.choices
    }
    differing = {n: (ours[n], expected[n]) for n in expected if ours.get(n) != expected[n]}
    assert not differing, f"{len(differing)} tensors differ (ours, llama.cpp): {dict(list(differing.items())[:8])}"
