"""qrun vs llama.cpp (llama-cpp-python) on the same files: next-token logits over 512 tokens of the fixed text
and greedy 64-token continuations (raw text and a chat prompt).

Files: the package's own Q4_1 SmolLM2 and the converter's f32 / q8_0 / q4_0 / q4_k_m conversions of the SmolLM2 HF
folder. llama.cpp runs with its defaults (weights repacked where it repacks them).
Both runtimes use an f32 KV cache for the logits check; the continuation check uses the defaults (f16 cache).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import requires_llama_cpp

pytestmark = [pytest.mark.reference, requires_llama_cpp]

N_TOKENS = 512


def llama(path: Path, f32_kv: bool, n_ctx: int = 1024):
    """llama.cpp as users run it: its default (repacked) weight buffers, whose summation orders qrt's packed kernels
    follow (q4_0/q4_K repacked; q8_0/q5_0/q6_K through ggml's own kernels)."""
    import llama_cpp

    from tests.llama_ref import quiet_stderr

    kwargs = dict(n_ctx=n_ctx, n_batch=512, logits_all=True, verbose=False, n_threads=2, n_threads_batch=2)
    if f32_kv:
        kwargs |= dict(type_k=0, type_v=0)
    with quiet_stderr():
        return llama_cpp.Llama(str(path), **kwargs)


def to_gguf(folder: Path, path: Path, type_name: str) -> Path:
    """`qconv to-gguf FOLDER -o PATH --type TYPE`, as a user runs it."""
    run = subprocess.run(
        [sys.executable, "-m", "qconv.converter.cli", "to-gguf", str(folder), "-o", str(path), "--type", type_name],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return path


@pytest.fixture(scope="module")
def converted(smollm2_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("converted")
    return {t: to_gguf(smollm2_dir, out / f"smollm2-{t}.gguf", t) for t in ("f32", "q8_0", "q4_0", "q4_k_m")}


def model_file(name: str, converted, smollm2_package_gguf) -> Path:
    return smollm2_package_gguf if name == "package-q4_1" else converted[name]


@pytest.mark.parametrize("name", ["f32", "q4_k_m"])
def test_last_token_logits_match_llama_cpp(name, converted, fixed_text):
    """Only the last token's logits, as generation asks for them: llama.cpp's graph then runs the last layer's
    feed-forward on that row alone (inp_out_ids), with one row's kernels, and so does qrun. Equal to the bit. f32 is
    where running that row inside the 512-token batch shows (8.6e-6 off): its matmuls take ggml's sgemm order in a
    batch and ggml_vec_dot's for one row; in q4_k_m the q6_K ffn_down's orders differ too, but the output matmul's
    q8_0 activations round the difference away."""
    import llama_cpp

    from qconv.runtime.model import Model
    from tests.llama_ref import quiet_stderr

    path = converted[name]
    kwargs = dict(n_ctx=1024, n_batch=512, logits_all=False, verbose=False, n_threads=2, n_threads_batch=2)
    with quiet_stderr():
        ref_model = llama_cpp.Llama(str(path), **kwargs, type_k=0, type_v=0)
        tokens = ref_model.tokenize(fixed_text.encode(), add_bos=True)[:N_TOKENS]
        ref_model.eval(tokens)
    ref = np.ctypeslib.as_array(ref_model._ctx.get_logits_ith(-1), shape=(ref_model.n_vocab(),)).copy()
    got = Model(path, threads=2, ctx=1024, kv_f32=True).eval(tokens)
    assert float(np.abs(got - ref).max()) == 0.0


@pytest.mark.parametrize("name", ["package-q4_1", "f32", "q8_0", "q4_0", "q4_k_m"])
def test_logits_match_llama_cpp(name, converted, smollm2_package_gguf, fixed_text):
    from qconv.runtime.model import Model
    from tests.llama_ref import logits as llama_logits

    path = model_file(name, converted, smollm2_package_gguf)
    ref_model = llama(path, f32_kv=True)
    tokens = ref_model.tokenize(fixed_text.encode(), add_bos=True)[:N_TOKENS]
    assert len(tokens) == N_TOKENS
    ref = llama_logits(ref_model, tokens)
    ours = Model(path, threads=2, ctx=1024, kv_f32=True)
    assert ours.tokenize(fixed_text)[:N_TOKENS] == tokens
    got = ours.logits(tokens)
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    max_diff = float(np.abs(got - ref).max())
    print(f"{name}: top-1 agreement {top1:.4f}, max |logit diff| {max_diff:.3g}")
    assert top1 >= 0.99
    if name == "f32":
        assert max_diff < 1e-2
    else:  # the integer kernels reproduce llama.cpp's summation orders: equal to the bit
        assert max_diff == 0.0


def greedy_ids(model, prompt_ids: list[int], n: int) -> list[int]:
    from tests.llama_ref import quiet_stderr

    model.reset()
    out = []
    with quiet_stderr():
        model.eval(prompt_ids)
        for _ in range(n):
            token = int(np.argmax(model.scores[model.n_tokens - 1]))
            out.append(token)
            model.eval([token])
    return out


def assert_greedy_raw_continuation_equal(path: Path, prompt: str, n: int = 64) -> list[int]:
    """qrun's greedy n-token continuation of a raw prompt equals llama.cpp's (both with their default f16 cache)."""
    from qconv.runtime.model import Model

    ref_model = llama(path, f32_kv=False, n_ctx=1024)
    ours = Model(path, threads=2, ctx=1024)
    prompt_ids = ours.tokenize(prompt)
    assert prompt_ids == ref_model.tokenize(prompt.encode(), add_bos=True, special=True)
    ref = greedy_ids(ref_model, prompt_ids, n)
    got: list[int] = []
    for _ in ours.generate(prompt_ids, n, temperature=0, ignore_eos=True, token_ids=got):
        pass
    assert got == ref, f"{path.name}: qrun diverges at token {next(i for i in range(n) if got[i] != ref[i])}"
    return ref


@pytest.mark.parametrize("name", ["f32", "q8_0", "package-q4_1", "q4_0", "q4_k_m"])
def test_greedy_continuations_identical(name, converted, smollm2_package_gguf):
    from qconv.runtime.model import Model

    path = model_file(name, converted, smollm2_package_gguf)
    ref_model = llama(path, f32_kv=False)
    ours = Model(path, threads=2, ctx=1024)
    chat = ours.render_chat([{"role": "user", "content": "Write a short poem about the sea."}])
    for prompt in ("The history of the Roman Empire", chat):
        prompt_ids = ours.tokenize(prompt)
        assert prompt_ids == ref_model.tokenize(prompt.encode(), add_bos=True, special=True)
        ref = greedy_ids(ref_model, prompt_ids, 64)
        got: list[int] = []
        for _ in ours.generate(prompt_ids, 64, temperature=0, ignore_eos=True, token_ids=got):
            pass
        assert got == ref, f"{name}: diverges at token {next(i for i in range(64) if got[i] != ref[i])}"


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_architectures_match_llama_cpp(arch, random_model_factory, tmp_path):
    """Random-weight models of each family (qwen2 q/k/v biases, qwen3 q/k norms, neox rope) at f32."""
    from qconv.runtime.model import Model
    from tests.llama_ref import logits as llama_logits

    folder = random_model_factory(arch=arch, hidden=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512, vocab=512)
    path = to_gguf(folder, tmp_path / f"{arch}.gguf", "f32")
    tokens = [int(t) for t in np.random.default_rng(0).integers(3, 500, 64)]
    ref = llama_logits(llama(path, f32_kv=True, n_ctx=256), tokens)
    got = Model(path, threads=2, ctx=256, kv_f32=True).logits(tokens)
    assert float((got.argmax(-1) == ref.argmax(-1)).mean()) == 1.0
    assert float(np.abs(got - ref).max()) < 1e-3


def test_logits_match_at_odd_prompt_lengths(converted, fixed_text):
    """Prompt lengths whose chunking differs from llama.cpp's batching (a 3-token tail after 64, a batch under 8):
    the packed q4_K/q6_K kernels take their order from the token's place in llama.cpp's batch, so logits stay equal."""
    from qconv.runtime.model import Model
    from tests.llama_ref import logits as llama_logits

    ref_model = llama(converted["q4_k_m"], f32_kv=True)
    ours = Model(converted["q4_k_m"], threads=2, ctx=1024, kv_f32=True)
    tokens = ref_model.tokenize(fixed_text.encode(), add_bos=True)
    for n in (5, 67, 130):
        assert float(np.abs(ours.logits(tokens[:n]) - llama_logits(ref_model, tokens[:n])).max()) == 0.0, n


ROPE_SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn-long": {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096},
}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # interleaved and neox rope
@pytest.mark.parametrize("scaling", list(ROPE_SCALINGS))
def test_rope_scaling_matches_llama_cpp(arch, scaling, tmp_path):
    """Scaled rotary embeddings as llama.cpp runs them: linear, and YaRN (extrapolated and interpolated angles
    mixed by a ramp over the correction range, cos/sin scaled by 1 + 0.1 ln(factor)), at positions past the
    original context. Also checks the scaling changes the logits, so the comparison can fail."""
    from qconv.runtime.model import Model
    from qconv.samples.synthetic import build_random_model
    from tests.llama_ref import logits as llama_logits

    shape = dict(arch=arch, hidden=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512, vocab=512)
    tokens = [int(t) for t in np.random.default_rng(1).integers(3, 500, 160)]
    results = {}
    for name, rope in (("plain", None), (scaling, ROPE_SCALINGS[scaling])):
        path = to_gguf(
            build_random_model(tmp_path / name, rope_scaling=rope, **shape), tmp_path / f"{name}.gguf", "f32"
        )
        ref = llama_logits(llama(path, f32_kv=True, n_ctx=256), tokens)
        got = Model(path, threads=2, ctx=256, kv_f32=True).logits(tokens)
        assert float(np.abs(got - ref).max()) == 0.0, name  # the angles round as ggml's do
        results[name] = got
    assert float(np.abs(results[scaling] - results["plain"]).max()) > 1e-2
