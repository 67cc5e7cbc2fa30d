"""`qconv eval --text` and `--ref-cache` against llama-perplexity on SmolLM2 (q4_k_m against f32, ctx 512):
(a) our KLD, top-1 and perplexity ratio equal llama-perplexity's `--kl-divergence` figures within 2%;
(b) llama-perplexity reads our cache as its `--kl-divergence-base` and reports what it reports from its own;
(c) scoring from the cache equals scoring with the live reference within the uint16 step.
Three chunks of text (~1600 tokens) keep the five passes of each engine within about a minute on 2 cores."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from qconv.converter.convert import convert_to_gguf
from qconv.converter.quality import ref_cache, suites, texts
from qconv.converter.quality.runner import Runner
from qconv.converter.quality.token_stats import TokenStats
from qconv.runtime.logit_stats import logit_stats
from tests.converter.test_eval_texts import score_text
from tests.llama_tools import build_tools, tools_missing_reason

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(tools_missing_reason() is not None, reason=str(tools_missing_reason())),
]

CTX = 512
CHUNKS = 3
THREADS = 2
LLAMA_FIGURES = {
    "ppl_quant": r"Mean PPL\(Q\)\s*:\s*([\d.]+)",
    "ppl_ref": r"Mean PPL\(base\)\s*:\s*([\d.]+)",
    "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([\d.]+)",
    "kld_mean": r"Mean\s+KLD:\s*([\d.]+)",
    "top1": r"Same top p:\s*([\d.]+)",  # in percent
}


@pytest.fixture(scope="module")
def files(smollm2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-texts")
    models = {
        t: convert_to_gguf(smollm2_dir, out / f"smollm2-{t}.gguf", t, progress=False).out_path
        for t in ("f32", "q4_k_m")
    }
    ref = Runner(models["f32"], CTX, THREADS)
    documents = [d for s in suites.get_suites(None) if not s.whole_documents for d in s.documents("eval")]
    whole = "\n\n".join(documents)
    length = 4000
    while len(ref.tokenize(whole[:length], ref.add_bos)) < CHUNKS * CTX + 16:  # a few tokens over 3 chunks
        length += 200
    text = out / "text.txt"
    text.write_text(whole[:length], encoding="utf-8")
    return {**models, "text": text, "out": out, "ref": ref}


def llama_perplexity(model, *args) -> str:
    tool = build_tools(("llama-perplexity",))["llama-perplexity"]
    cmd = [str(tool), "-m", str(model), "-c", str(CTX), "-b", str(CTX), "-t", str(THREADS), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def llama_figures(log: str) -> dict:
    figures = {}
    for key, pattern in LLAMA_FIGURES.items():
        found = re.search(pattern, log)
        assert found, f"no '{key}' in llama-perplexity's output:\n{log[-3000:]}"
        figures[key] = float(found.group(1))
    figures["top1"] /= 100
    return figures


@pytest.fixture(scope="module")
def llama_base(files):
    """llama-perplexity's own base file from the f32 reference, and its KLD report of the q4_k_m file."""
    base = files["out"] / "llama-base.bin"
    log = llama_perplexity(files["f32"], "-f", files["text"], "--kl-divergence-base", base)
    assert f"calculating perplexity over {CHUNKS} chunks" in log, log[-3000:]
    return base, llama_figures(llama_perplexity(files["q4_k_m"], "--kl-divergence-base", base, "--kl-divergence"))


def log_softmax(logits):
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


@pytest.fixture(scope="module")
def ours(files):
    """One pass of both models over the text's windows: the live scores, the cache written as the reference is
    run, and per row the cached scores from the same logits with the bound the uint16 step allows them."""
    ref, quant = files["ref"], Runner(files["q4_k_m"], CTX, THREADS)
    (text,) = texts.read_texts([f"text={files['text']}"])
    tokens = texts.text_tokens(ref, text, CTX)
    windows = texts.text_windows(tokens, CTX, ref.bos if ref.add_bos else None)
    assert len(windows) == CHUNKS
    description = ref_cache.describe(files["f32"], [text], CTX, [], {})
    path = files["out"] / "ours.bin"
    live, in_memory = TokenStats(), TokenStats()
    worst = {"nll_ref": 0.0, "kld": 0.0}
    with ref_cache.CacheWriter(path, description, CTX, ref.n_vocab, [("text", tokens)]) as writer:
        for window, first in windows:
            r = texts.scored_logits(ref, window, first)
            q = texts.scored_logits(quant, window, first)
            nxt = np.asarray(window[first + 1 :], dtype=np.int32)
            exact = logit_stats(r, q, nxt)
            rows = ref_cache.encode_log_probs(r)
            cached = ref_cache.cached_stats(rows, q, nxt)
            live.add_stats(exact, nxt)
            in_memory.add_stats(cached, nxt)
            writer.add_chunk(r)
            # The bound: each kept log-prob is off by at most scale/2, which moves a row's KLD by at most
            # scale/2 * (1 + sum p |log p - log q|); llama's KLD leaves out the log-probs at or below -16.
            scale, low = ref_cache.row_scales(rows)
            lp_ref, lp_q = log_softmax(r), log_softmax(q)
            gap = np.exp(lp_ref) * np.abs(lp_ref - lp_q)
            tail = (gap * (lp_ref <= -ref_cache.LOG_PROB_RANGE + scale[:, None])).sum(1)  # what llama skips
            bound = scale / 2 * 1.001 * (1 + gap.sum(1)) + tail + 1e-6
            assert np.all(np.abs(cached.kld - exact.kld) <= bound)
            kept = exact.nll_ref < -low - scale
            assert np.all(np.abs(cached.nll_ref - exact.nll_ref)[kept] <= scale[kept] / 2 + 2e-5)
            worst["nll_ref"] = max(worst["nll_ref"], float(np.abs(cached.nll_ref - exact.nll_ref)[kept].max()))
            worst["kld"] = max(worst["kld"], float(np.abs(cached.kld - exact.kld).max()))
            del r, q
    cache = ref_cache.load_cache(path, description)
    from_file = score_text(quant, windows, cache.reference("text"))
    return {"path": path, "live": live, "in_memory": in_memory, "from_file": from_file, "worst": worst}


def test_our_figures_agree_with_llama_perplexity(ours, llama_base):
    _, theirs = llama_base
    mine = ours["live"].summary()
    print("ours", {k: mine[k] for k in theirs}, "llama-perplexity", theirs)
    assert mine["tokens"] == CHUNKS * (CTX - 1 - CTX // 2)
    for key in ("kld_mean", "top1", "ppl_ratio", "ppl_ref", "ppl_quant"):
        assert mine[key] == pytest.approx(theirs[key], rel=0.02), key


def test_llama_perplexity_reads_our_cache(files, ours, llama_base):
    base, theirs = llama_base
    header = 20 + 4 * CHUNKS * CTX
    assert ours["path"].read_bytes()[:header] == base.read_bytes()[:header]  # same layout, tokens, n_vocab
    assert ours["path"].stat().st_size == base.stat().st_size
    ours_read = llama_figures(
        llama_perplexity(files["q4_k_m"], "--kl-divergence-base", ours["path"], "--kl-divergence")
    )
    print("llama-perplexity on our base", ours_read, "on its own", theirs)
    for key in ("kld_mean", "ppl_ratio", "ppl_ref", "ppl_quant"):
        assert ours_read[key] == pytest.approx(theirs[key], rel=1e-3), key
    positions = CHUNKS * (CTX - 1 - CTX // 2)
    assert abs(ours_read["top1"] - theirs["top1"]) <= 2 / positions  # a near-tie may flip in either engine


def test_scoring_from_the_cache_equals_the_live_reference(ours):
    live, in_memory, from_file = (ours[k].summary() for k in ("live", "in_memory", "from_file"))
    print("live", live, "cached", from_file, "worst row differences", ours["worst"])
    for key in ("kld_mean", "top1", "ppl_ref", "ppl_quant"):
        assert from_file[key] == pytest.approx(in_memory[key], rel=1e-9), key
    step = 16 / 65535
    assert abs(np.log(from_file["ppl_ref"] / live["ppl_ref"])) <= step / 2
    assert from_file["ppl_quant"] == pytest.approx(live["ppl_quant"], rel=1e-6)
    assert from_file["kld_mean"] == pytest.approx(live["kld_mean"], rel=5e-3)
    assert abs(from_file["top1"] - live["top1"]) <= 1 / live["tokens"]


def test_qconv_eval_text_agrees_with_llama_perplexity_and_its_cache_skips_the_reference(files, llama_base):
    """Through the command: `qconv eval Q --ref F --suite none --text NAME=FILE` gives llama-perplexity's
    --kl-divergence figures within 2%; with --ref-cache the second run reads the reference from the file (llama's
    base layout, which llama-perplexity reads as its own) and never runs the reference model."""
    import json
    import sys

    _, theirs = llama_base
    cache = files["out"] / "eval-cache.bin"
    command = [sys.executable, "-c", "from qconv.converter.cli import main; main()", "eval", str(files["q4_k_m"]),
               "--ref", str(files["f32"]), "--suite", "none", "--text", f"wiki={files['text']}", "-c", str(CTX),
               "-t", str(THREADS), "-q", "--json", "--ref-cache", str(cache)]  # fmt: skip
    reports = []
    for _ in range(2):
        run = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        reports.append(json.loads(run.stdout))
    first, second = reports
    [row] = first["candidates"][0]["suites"]
    assert row["name"] == "wiki" and row["tokens"] == CHUNKS * (CTX - 1 - CTX // 2)
    for key in ("kld_mean", "top1", "ppl_ratio", "ppl_ref", "ppl_quant"):
        assert row[key] == pytest.approx(theirs[key], rel=0.02), key
    assert first["reference_speed"]["tokens"] > 0 and second["reference_speed"]["tokens"] == 0
    [cached] = second["candidates"][0]["suites"]
    for key in ("kld_mean", "top1", "ppl_ratio"):
        assert cached[key] == pytest.approx(theirs[key], rel=0.02), key
    read_by_llama = llama_figures(llama_perplexity(files["q4_k_m"], "--kl-divergence-base", cache, "--kl-divergence"))
    assert read_by_llama["kld_mean"] == pytest.approx(theirs["kld_mean"], rel=1e-3)
