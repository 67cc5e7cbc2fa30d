"""`qconv sample gemma3` end to end (issue 11): the files we write from the sample folder, in qrun, llama.cpp and
transformers.

1. Our f32 file of the sample reproduces the package's Q4_K_M file it was rebuilt from: every weight is the
   package's dequantized value, and qrun's logits on the two files differ only where the package's matrix products
   quantize their activations (to 8 bits, as llama.cpp's Q4_K/Q5_0/Q6_K/Q8_0 dot products do). That rounding flips
   the top token only at near-ties, so top-1 agreement is ~96%, not 99%: the positions where the f32 file's best
   token leads by a clear margin all agree. Transformers on the folder agrees with qrun on our f32 file.
2. llama.cpp loads our f32, q8_0 and q4_k_m files and agrees with qrun over 1024 tokens (past the 512-token sliding
   window; bit-equal at q8_0 and q4_k_m); the greedy raw continuations are identical at f32 and q8_0.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import requires_llama_cpp, requires_torch
from tests.runtime.test_gemma3_reference import PROMPT
from tests.runtime.test_model_reference import assert_greedy_raw_continuation_equal, llama, to_gguf

pytestmark = [pytest.mark.reference, requires_llama_cpp]

N_TOKENS = 1024
HF_TOKENS = 640  # past the sliding window, ~8 s of transformers on 2 cores
CLEAR_MARGIN = 0.5  # logits; the logit std over the vocabulary is ~5


@pytest.fixture(scope="module")
def gemma3_dir():
    from qconv.samples.gemma3 import cached_gemma3

    return cached_gemma3()


@pytest.fixture(scope="module")
def package_gguf():
    from qconv.samples.gemma3 import gemma3_gguf_path

    return gemma3_gguf_path()


@pytest.fixture(scope="module")
def converted(gemma3_dir, tmp_path_factory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("gemma3")
    return {t: to_gguf(gemma3_dir, out / f"gemma3-{t}.gguf", t) for t in ("f32", "q8_0", "q4_k_m")}


@pytest.fixture(scope="module")
def long_text(fixed_text) -> str:
    return "\n\n".join([fixed_text] * 3)  # the fixed text is ~730 Gemma tokens


@pytest.fixture(scope="module")
def tokens(package_gguf, long_text) -> list[int]:
    from qconv.runtime.model import Model

    ids = Model(package_gguf, threads=2, ctx=64).tokenize(long_text)[:N_TOKENS]
    assert len(ids) == N_TOKENS and ids[0] == 2  # <bos>
    return ids


def qrun_logits(path, tokens) -> np.ndarray:
    from qconv.runtime.model import Model

    return Model(path, threads=2, ctx=2048, kv_f32=True).logits(tokens)


def mean_kld(ref: np.ndarray, got: np.ndarray) -> float:
    from tests.llama_ref import kl_divergence

    # in row blocks: the float64 temporaries of 1024 x 262144 logits would take several GB
    return float(
        np.concatenate([kl_divergence(ref[i : i + 128], got[i : i + 128]) for i in range(0, len(ref), 128)]).mean()
    )


@pytest.fixture(scope="module")
def f32_logits(converted, tokens) -> np.ndarray:
    return qrun_logits(converted["f32"], tokens)


def test_f32_file_holds_the_package_weights(converted, package_gguf):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    ours = {t.name: t for t in GGUFReader(converted["f32"]).tensors}
    theirs = GGUFReader(package_gguf).tensors
    assert set(ours) == {t.name for t in theirs}
    for tensor in theirs:
        mine = np.asarray(ours[tensor.name].data, dtype=np.float32)
        expected = dequantize(tensor.data, tensor.tensor_type).reshape(mine.shape)
        if tensor.name.endswith("norm.weight"):  # (w + 1) - 1 + 1 in float32: within an ulp of 1
            np.testing.assert_allclose(mine, expected, rtol=0, atol=2**-23, err_msg=tensor.name)
        else:
            assert np.array_equal(mine, expected), tensor.name


def test_f32_file_reproduces_the_package_logits(converted, package_gguf, tokens, f32_logits):
    package = qrun_logits(package_gguf, tokens)
    best = f32_logits.argmax(-1)
    agree = best == package.argmax(-1)
    top2 = np.partition(f32_logits, -2, axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    clear = margin > CLEAR_MARGIN
    kld = mean_kld(f32_logits, package)
    print(
        f"\nf32 vs package Q4_K_M (qrun, {N_TOKENS} tokens): top-1 {agree.mean():.4f}, KLD {kld:.4f}; "
        f"largest f32 margin where they disagree {margin[~agree].max(initial=0):.3f}; "
        f"top-1 where the margin > {CLEAR_MARGIN}: {agree[clear].mean():.4f} ({clear.sum()} positions)"
    )
    assert kld < 0.01
    assert agree.mean() >= 0.95
    assert agree[clear].all()


@requires_torch
def test_transformers_on_the_folder_agrees_with_qrun_on_our_f32_file(gemma3_dir, tokens, f32_logits):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(gemma3_dir, dtype=torch.float32)
    with torch.no_grad():
        theirs = model(torch.tensor([tokens[:HF_TOKENS]])).logits[0].numpy()
    ours = f32_logits[:HF_TOKENS]
    rel = float(np.abs(ours - theirs).max() / theirs.std())
    top1 = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    print(f"\ntransformers vs qrun f32 ({HF_TOKENS} tokens): max |diff| / std {rel:.2e}, top-1 {top1:.4f}")
    assert rel < 1e-2
    assert top1 >= 0.98


# Quantized files: the integer kernels follow llama.cpp's summation orders and ggml's GELU table (built with FMA
# contraction), so the logits are equal to the bit; f32 matmuls are not emulated (llama.cpp's f32 order is not).
@pytest.mark.parametrize("name", ["f32", "q8_0", "q4_k_m"])
def test_llama_cpp_agrees_with_qrun(name, converted, long_text, tokens, f32_logits):
    from tests.llama_ref import logits as llama_logits

    ref_model = llama(converted[name], f32_kv=True, n_ctx=2048)
    assert ref_model.tokenize(long_text.encode(), add_bos=True)[:N_TOKENS] == tokens
    ref = llama_logits(ref_model, tokens)
    del ref_model
    got = f32_logits if name == "f32" else qrun_logits(converted[name], tokens)
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    diff = float(np.abs(got - ref).max())
    print(f"\n{name}: llama.cpp vs qrun over {N_TOKENS} tokens: top-1 {top1:.4f}, KLD {mean_kld(ref, got):.2g}, "
          f"max |diff| {diff:.3g} (std {ref.std():.3g})")  # fmt: skip
    assert top1 >= 0.99
    if name != "f32":
        assert diff == 0.0


@pytest.mark.parametrize("name", ["f32", "q8_0"])
def test_greedy_raw_continuation_identical(name, converted):
    assert_greedy_raw_continuation_equal(converted[name], PROMPT)
