"""Several sequences in one model (KV slots) evaluated together: a sequence's logits are bit-identical alone and
batched with others (decode steps of N streams in one forward pass, prompts joining mid-way), for the packed and
plain kernels, f16 and f32 caches, sliding windows and experts; the C batch API refuses bad entries."""

from __future__ import annotations

import numpy as np
import pytest

from qconv.converter.convert import convert_to_gguf
from qconv.formats.errors import FormatError
from qconv.samples.synthetic import build_random_model
from tests.family_shapes import FAMILY_SHAPES

STEPS = 12


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """GGUFs whose matmuls take the packed x16 kernels (q4_0, q8_0, q4_k_m), the plain ones (q5_k_m, f16), a
    sliding window (gemma3) and experts (qwen3moe)."""
    tmp = tmp_path_factory.mktemp("batch")
    llama = build_random_model(tmp / "llama", arch="llama", hidden=256, n_layers=2, ffn=512, vocab=512, seed=3)
    out = {
        t: convert_to_gguf(llama, tmp / f"llama-{t}.gguf", t, progress=False).out_path
        for t in ("q4_0", "q8_0", "q4_k_m", "q5_k_m", "f16")
    }
    gemma = build_random_model(
        tmp / "gemma3", dtype="f32", seed=5, **dict(FAMILY_SHAPES["gemma3"], context_length=2048)
    )
    out["gemma3"] = convert_to_gguf(gemma, tmp / "gemma3.gguf", "q8_0", progress=False).out_path
    moe = build_random_model(tmp / "moe", dtype="f32", seed=7, **FAMILY_SHAPES["qwen3moe"])
    out["qwen3moe"] = convert_to_gguf(moe, tmp / "moe.gguf", "q8_0", progress=False).out_path
    return out


def prompts(n_vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, n_vocab, size=n).tolist() for n in lengths]


def alone(path, prompt: list[int], steps: int, **options) -> tuple[list[np.ndarray], list[int]]:
    """Greedy steps of one sequence in a model of its own: the logits of every step, the tokens chosen."""
    from qconv.runtime import Model

    with Model(path, threads=2, ctx=512, **options) as model:
        logits = [model.evaluate(prompt)]
        tokens = []
        for _ in range(steps):
            tokens.append(int(np.argmax(logits[-1])))
            logits.append(model.evaluate([tokens[-1]]))
    return logits, tokens


@pytest.mark.parametrize("kind", ["q4_0", "q8_0", "q4_k_m", "q5_k_m", "f16", "gemma3", "qwen3moe"])
def test_batched_decode_is_bit_identical_to_alone(files, kind):
    from qconv.runtime import Model

    path = files[kind]
    options = {"kv_f32": True} if kind == "f16" else {}
    with Model(path, threads=2, ctx=512, n_seq=4, **options) as model:
        # gemma3's window is shorter than these sequences: its sliding rows move while they are batched
        long = 300 if kind == "gemma3" else 40
        ps = prompts(model.n_vocab, [5, 17, long, 1])
        expected = [alone(path, p, STEPS, **options) for p in ps]
        # sequences 0 and 1 start, 2 and 3 join later (their prompts run in the same call as the others' steps)
        last = dict(enumerate(model.evaluate_batch([(0, ps[0]), (1, ps[1])])))
        got = {s: [last[s]] for s in last}
        chosen = {s: [] for s in range(4)}
        for step in range(STEPS + 10):
            batch = []
            for s in range(4):
                if s in last and len(chosen[s]) < STEPS:
                    chosen[s].append(int(np.argmax(last[s])))
                    batch.append((s, [chosen[s][-1]]))
            if step == 2:
                batch.append((2, ps[2]))
            if step == 4:
                batch.append((3, ps[3]))
            if not batch:
                break
            for (s, _), row in zip(batch, model.evaluate_batch(batch)):
                last[s] = row
                got.setdefault(s, []).append(row)
        for s in range(4):
            logits, tokens = expected[s]
            assert chosen[s] == tokens
            assert len(got[s]) == len(logits)
            for k, (a, b) in enumerate(zip(got[s], logits)):
                assert np.array_equal(a, b), f"{kind}: sequence {s}, step {k}: max |diff| {np.abs(a - b).max()}"


def test_sequences_are_separate_caches(files):
    from qconv.runtime import Model, prefill

    with Model(files["q8_0"], threads=2, ctx=64, n_seq=2) as model:
        a, b = prompts(model.n_vocab, [10, 12], seed=1)
        prefill(model, a, seq=0)
        prefill(model, b, seq=1)
        assert model.cached(0) == a and model.cached(1) == b
        assert model.truncate(4, seq=1) and model.cached(1) == b[:4] and model.cached(0) == a
        model.reset(0)
        assert model.cached(0) == [] and model.cached(1) == b[:4]
        with pytest.raises(FormatError, match="context full"):
            model.evaluate(list(range(1, 62)), seq=1)
        with pytest.raises(FormatError, match="appears twice"):
            model.evaluate_batch([(0, [1]), (0, [2])])
        with pytest.raises(FormatError, match="sequence 2"):
            model.evaluate([1], seq=2)
        assert model.cached(1) == b[:4]  # nothing evaluated by the refused calls
        assert model.kv_bytes == 2 * Model(files["q8_0"], threads=1, ctx=64).kv_bytes


def test_decode_api_refuses_bad_entries_before_evaluating(files):
    from qconv.runtime import Model
    from qconv.runtime._native import ffi, lib

    with Model(files["q8_0"], threads=1, ctx=32, n_seq=2) as model:
        handle = model._handle  # the C API itself, below the protocol
        out = np.empty((2, model.n_vocab), dtype=np.float32)

        def decode(*entries) -> str:
            arr = ffi.new("qrt_batch_entry[]", [dict(token=t, seq=s, pos=p, logits=1) for t, s, p in entries])
            if lib.qrt_model_decode(handle, arr, len(entries), ffi.from_buffer("float[]", out)) == 0:
                return ""
            return ffi.string(lib.qrt_model_error(handle)).decode()

        assert "position 1 of sequence 0 (expected 0" in decode((5, 0, 1))
        assert "sequence 2 (expected 0..1)" in decode((5, 2, 0))
        assert "outside the vocabulary" in decode((5, 0, 0), (model.n_vocab, 1, 0))
        assert lib.qrt_model_seq_n_past(handle, 0) == 0 and lib.qrt_model_seq_n_past(handle, 1) == 0
        assert decode((5, 0, 0), (6, 1, 0)) == ""
        assert decode((7, 0, 1), (8, 0, 2)) == ""  # two entries of one sequence: a prompt pass
        assert lib.qrt_model_seq_n_past(handle, 0) == 3 and lib.qrt_model_seq_n_past(handle, 1) == 1
        assert "context full" in decode(*[(1, 1, 1 + i) for i in range(32)])
