"""runtime.Model: tokenize/detokenize, logits, generation (greedy, stop strings, seeds), chat rendering, the qrun
CLI, and memory while generating. Reference comparisons with llama.cpp live in test_model_reference.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qconv.formats.errors import FormatError
from qconv.runtime.model import Model


@pytest.fixture(scope="module")
def model(smollm2_package_gguf) -> Model:
    return Model(smollm2_package_gguf, threads=2, ctx=512)


def test_tokenize_roundtrip(model):
    text = "Hello world! The quick brown fox: 123 + 456 = 579."
    ids = model.tokenize(text)
    assert model.detokenize(ids) == text
    assert model.tokenize("<|im_start|>user", parse_special=True)[0] == 1  # a special token matched whole


def test_logits_shape_and_consistency(model):
    ids = model.tokenize("The capital of France is Paris. The capital of Italy is")
    all_rows = model.logits(ids)
    assert all_rows.shape == (len(ids), model.n_vocab)
    # the incremental path gives the same last row as the batched one
    model.reset()
    model.eval(ids[:-3])
    for t in ids[-3:]:
        last = model.eval([t])
    np.testing.assert_allclose(last, all_rows[-1], atol=2e-3)
    assert model.detokenize([int(all_rows[-1].argmax())]).strip() == "Rome"


def test_greedy_generation_is_deterministic(model):
    a = "".join(model.generate("Once upon a time", 16, temperature=0))
    b = "".join(model.generate("Once upon a time", 16, temperature=0))
    assert a == b and len(a) > 10


def test_seeded_sampling(model):
    a = "".join(model.generate("Once upon a time", 12, temperature=1.0, seed=5))
    b = "".join(model.generate("Once upon a time", 12, temperature=1.0, seed=5))
    assert a == b


def test_stop_string_ends_generation(model):
    full = "".join(model.generate("1, 2, 3, 4,", 24, temperature=0))
    assert " 7" in full
    stopped = "".join(model.generate("1, 2, 3, 4,", 24, temperature=0, stop=[" 7"]))
    assert stopped == full[: full.index(" 7")]


def test_chat_template_rendering(model):
    text = model.render_chat([{"role": "user", "content": "Hi"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_context_overflow_is_an_error(smollm2_package_gguf):
    small = Model(smollm2_package_gguf, threads=1, ctx=8)
    with pytest.raises(FormatError, match="context full"):
        small.logits(list(range(100, 120)))


def test_kernel_variants_reported(model):
    variants = model.kernel_variants()
    assert set(variants) == {"q4_1", "q8_0"}
    assert all(v.split(", ")[0] in ("scalar", "avx2", "avx512", "neon") for v in variants.values())
    for t, v in variants.items():  # the q4_1 matrices and the q8_0 head are repacked wherever a SIMD kernel runs
        assert ("packed x16" in v) == (v.split(", ")[0] != "scalar"), (t, v)


def run_qrun(*args, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "qconv.runtime.cli", *args], input=stdin, capture_output=True, text=True, timeout=300
    )


def test_qrun_prompt_streams_only_text(smollm2_package_gguf):
    run = run_qrun(str(smollm2_package_gguf), "--raw", "--prompt", "The sky is", "--temp", "0", "-n", "8", "-t", "2")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() and "tok/s" not in run.stdout
    assert "generation: 8 tokens" in run.stderr


def test_qrun_json_and_verbose(smollm2_package_gguf):
    run = run_qrun(str(smollm2_package_gguf), "-p", "Hi", "--temp", "0", "-n", "6", "--json", "--verbose", "-t", "2")
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["generated_tokens"] == len(record["tokens"]) <= 6
    assert "kernel q4_1:" in run.stderr and "kernel q8_0:" in run.stderr
    assert "q8_0: avx512, packed x16" in run.stderr or "avx512" not in run.stderr  # the tied head is repacked


def test_qrun_interactive(smollm2_package_gguf):
    run = run_qrun(str(smollm2_package_gguf), "--temp", "0", "-n", "5", "-t", "2", stdin="Hello\nThanks\n")
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("generation:") == 2


def test_qrun_user_errors(tmp_path):
    missing = run_qrun(str(tmp_path / "nope.gguf"), "-p", "x")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 40)
    run = run_qrun(str(bad), "-p", "x")
    assert run.returncode == 1 and run.stderr.startswith("qrun: error: ") and "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def smollm2_q4_k_m(smollm2_dir, tmp_path_factory):
    from qconv.converter.convert import convert_to_gguf

    return convert_to_gguf(
        smollm2_dir, tmp_path_factory.mktemp("q4km") / "q4_k_m.gguf", "q4_k_m", progress=False
    ).out_path


@pytest.mark.parametrize("which", ["package-q4_1", "q4_k_m"])
def test_memory_while_generating(which, request):
    """RSS above an imported-package baseline stays within 1.1 x file + KV cache + 64 MB; the q4_k_m file has every
    matrix repacked into 16-row groups at load (the stored pages are given back), the package file only its head."""
    smollm2_package_gguf = request.getfixturevalue(
        "smollm2_package_gguf" if which == "package-q4_1" else "smollm2_q4_k_m"
    )
    script = textwrap.dedent(
        f"""
        import json, os
        import qconv.runtime.model as M
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        base = rss()
        m = M.Model({str(smollm2_package_gguf)!r}, threads=2, ctx=2048)
        peak = 0
        for i, _ in enumerate(m.generate("Tell me a story about a dragon.", 48, temperature=0.7, ignore_eos=True)):
            peak = max(peak, rss())
        print(json.dumps({{"grow": peak - base, "file": m.file_bytes, "kv": m.kv_bytes}}))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout)
    limit = 1.1 * r["file"] + r["kv"] + 64 * 2**20
    print(f"RSS growth {r['grow'] / 2**20:.1f} MiB, limit {limit / 2**20:.1f} MiB")
    assert r["grow"] <= limit
