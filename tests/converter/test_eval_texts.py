"""`qconv eval --text NAME=FILE` and `--ref-cache FILE` without a model: the option and file checks,
llama-perplexity's windows, the uint16 log-prob layout and its error bound, the cache round trip, hostile caches."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from qconv.converter.quality import ref_cache, texts
from qconv.converter.quality.token_stats import TokenStats
from qconv.formats.errors import FormatError
from qconv.runtime.logit_stats import logit_stats


def one_line_error(call, *args, match: str) -> str:
    with pytest.raises(FormatError, match=match) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- the option and the file


def test_parse_text_option_accepts_name_equals_file():
    assert texts.parse_text_option("wiki.test-2_x=data/a=b.txt") == ("wiki.test-2_x", Path("data/a=b.txt"))


@pytest.mark.parametrize(
    "spec, match",
    [
        ("novalue", "expected NAME=FILE"),
        ("name=", "expected NAME=FILE"),
        ("=file.txt", "1 to 64"),
        ("bad name=file.txt", "1 to 64"),
        ("x" * 65 + "=file.txt", "1 to 64"),
        ("prose=file.txt", "built-in suite"),
        ("long_context=file.txt", "built-in suite"),
    ],
)
def test_parse_text_option_rejects(spec, match):
    one_line_error(texts.parse_text_option, spec, match=match)


def test_load_text_errors_name_the_file(tmp_path, monkeypatch):
    missing = tmp_path / "missing.txt"
    assert str(missing) in one_line_error(texts.load_text, missing, match="cannot read")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert str(empty) in one_line_error(texts.load_text, empty, match="empty")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9 ok".encode("latin-1"))
    assert "byte 3 (0xe9)" in one_line_error(texts.load_text, latin, match="not UTF-8")
    one_line_error(texts.load_text, tmp_path, match="not a regular file")
    big = tmp_path / "big.txt"
    big.write_text("x" * 2000)
    monkeypatch.setattr(texts, "MAX_TEXT_BYTES", 1024)
    assert str(big) in one_line_error(texts.load_text, big, match="2000 bytes, more than")
    good = tmp_path / "good.txt"
    good.write_text("h\u00e9llo\n", encoding="utf-8")
    assert texts.load_text(good) == "h\u00e9llo\n"


def test_read_texts_refuses_a_name_twice(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    spec = f"a={tmp_path / 'a.txt'}"
    (text,) = texts.read_texts([spec])
    assert text.sha256 == "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
    one_line_error(texts.read_texts, [spec, spec], match="given twice")


# ---------------------------------------------------------------- windows


def test_text_windows_are_llama_perplexitys():
    tokens = list(range(100, 123))  # 23 tokens: two whole windows of 8, the last 7 tokens dropped
    windows = texts.text_windows(tokens, 8, bos=1)
    assert windows == [([1, 101, 102, 103, 104, 105, 106, 107], 4), ([1, 109, 110, 111, 112, 113, 114, 115], 4)]
    window, first = windows[1]
    scored = list(range(first, len(window) - 1))  # positions 4..6 predict the tokens at 5..7
    assert scored == [4, 5, 6] and len(scored) == ref_cache.scored_rows(8)
    assert [window[j + 1] for j in scored] == [113, 114, 115]
    assert texts.text_windows(tokens, 8, bos=None)[1] == (tokens[8:16], 4)
    assert texts.text_windows(tokens, 7, bos=None) == [(tokens[0:7], 3), (tokens[7:14], 3), (tokens[14:21], 3)]
    assert ref_cache.scored_rows(7) == 3
    assert texts.text_windows(tokens[:7], 8, bos=None) == []


class FakeRunner:
    """A causal toy model: row j of the logits depends on token j and position j only. noise: a 'quantized' copy."""

    def __init__(self, n_vocab=301, noise=0.0, add_bos=True, seed=0):
        rng = np.random.default_rng(seed)
        self.table = rng.normal(0, 3, size=(n_vocab, n_vocab)).astype(np.float32)
        self.table += noise * np.random.default_rng(seed + 1).normal(size=self.table.shape).astype(np.float32)
        self.n_vocab, self.add_bos, self.bos = n_vocab, add_bos, 0

    def tokenize(self, text, bos):
        return ([self.bos] if bos else []) + [1 + ord(c) % (self.n_vocab - 1) for c in text]

    def logits(self, tokens, score_last=None):
        rows = self.table[np.asarray(tokens)] + 0.01 * np.arange(len(tokens), dtype=np.float32)[:, None]
        return rows if score_last is None else rows[len(tokens) - score_last :]


def test_text_tokens_needs_one_window(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("x" * 9)
    (text,) = texts.read_texts([f"short={path}"])
    assert texts.text_tokens(FakeRunner(), text, 10) == [0] + [1 + ord("x") % 300] * 9
    message = one_line_error(texts.text_tokens, FakeRunner(), text, 11, match="fewer than one window")
    assert message == f"{path}: 10 tokens, fewer than one window of 11"


# ---------------------------------------------------------------- rows


def log_softmax(logits):
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_encoded_rows_hold_log_probs_within_half_a_step():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 6, size=(40, 1001)).astype(np.float32)  # odd vocabulary: one padding uint16
    logits[3] = 2.5  # a flat row: scale 0
    rows = ref_cache.encode_log_probs(logits)
    assert rows.shape == (40, ref_cache.row_width(1001)) == (40, 1006)
    assert not rows[:, -1].any()
    scale, low = ref_cache.row_scales(rows)
    assert scale[3] == 0 and not rows[3, 4:].any() and abs(low[3] + np.log(1001)) < 1e-5
    exact = log_softmax(logits)
    decoded = ref_cache.decode_log_probs(rows, 1001)
    kept = exact > exact.max(axis=1, keepdims=True) - 16
    error = np.abs(decoded - exact)
    assert np.all(error[kept] <= (scale[:, None] / 2 + 2e-5).repeat(1001, axis=1)[kept])
    assert np.all(decoded[~kept] == np.broadcast_to(low[:, None], decoded.shape)[~kept])  # the floor
    assert np.all(scale <= 16 / 65535 + 1e-9)
    assert np.all(rows[:, 4:-1].argmax(axis=1) == logits.argmax(axis=1))


def test_cached_stats_agree_with_exact_stats_within_the_step():
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 4, size=(64, 2000)).astype(np.float32)
    quant = ref + rng.normal(0, 0.3, size=ref.shape).astype(np.float32)
    nxt = rng.integers(0, 2000, size=64)
    exact = logit_stats(ref, quant, nxt)
    rows = ref_cache.encode_log_probs(ref)
    cached = ref_cache.cached_stats(rows, quant, nxt)
    scale, low = ref_cache.row_scales(rows)
    floored = -exact.nll_ref <= low + scale  # next tokens more than 16 nats below the top: at the row's floor
    assert 0 < floored.sum() < 64
    assert np.all(np.abs(cached.nll_ref - exact.nll_ref)[~floored] <= scale[~floored] / 2 + 2e-5)
    assert np.all(cached.nll_ref[floored] <= exact.nll_ref[floored] + scale[floored])
    np.testing.assert_allclose(cached.nll_quant, exact.nll_quant, rtol=0, atol=1e-5)
    assert np.array_equal(cached.argmax_quant, exact.argmax_quant)
    assert np.array_equal(cached.argmax_ref, exact.argmax_ref)
    p = np.exp(log_softmax(ref))
    spread = (p * np.abs(log_softmax(ref) - log_softmax(quant))).sum(axis=1)
    tail = (p * np.abs(log_softmax(ref) - log_softmax(quant)) * (log_softmax(ref) <= -16 + 1e-3)).sum(axis=1)
    bound = scale / 2 * 1.001 * (1 + spread) + tail + 1e-6
    assert np.all(np.abs(cached.kld - exact.kld) <= bound)
    assert abs(cached.kld.mean() / exact.kld.mean() - 1) < 1e-3


# ---------------------------------------------------------------- the cache file


def write_cache(tmp_path, n_ctx=16, chunks=(3, 2), noise=0.4, name="cache.bin"):
    """Texts of the given chunk counts, written with a live fake reference; (path, description, windows, runners)."""
    ref, quant = FakeRunner(), FakeRunner(noise=noise)
    specs = []
    for i, n in enumerate(chunks):
        path = tmp_path / f"t{i}.txt"
        path.write_text("".join(chr(33 + (i * 7 + j * 13) % 90) for j in range(n * n_ctx + 5)))
        specs.append(f"t{i}={path}")
    eval_texts = texts.read_texts(specs)
    tokens = [texts.text_tokens(ref, t, n_ctx) for t in eval_texts]
    windows = [texts.text_windows(toks, n_ctx, ref.bos) for toks in tokens]
    model = tmp_path / "ref.gguf"
    model.write_bytes(b"GGUF" + bytes(100))
    description = ref_cache.describe(model, eval_texts, n_ctx, ["maths"], {"max_tasks": 3})
    live = []
    path = tmp_path / name
    with ref_cache.CacheWriter(path, description, n_ctx, ref.n_vocab, list(zip(["t0", "t1"], tokens))) as writer:
        for wins in windows:
            live.append(score_text(quant, wins, LiveReference(ref, writer)))
        writer.answers["maths"] = ["42", "7"]
    return path, description, windows, quant, live


def test_cache_round_trip(tmp_path):
    path, description, windows, quant, live = write_cache(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries left
    n_vocab, nv = 301, ref_cache.row_width(301)
    assert path.stat().st_size == 8 + 12 + 4 * 5 * 16 + 2 * 5 * 7 * nv
    magic, n_ctx, vocab, n_chunk = struct.unpack_from("<8siii", path.read_bytes())
    assert (magic, n_ctx, vocab, n_chunk) == (b"_logits_", 16, n_vocab, 5)
    tokens = np.frombuffer(path.read_bytes(), dtype="<i4", count=80, offset=20)
    assert tokens[0] == tokens[48] == 0 and tokens[16] != 0  # as tokenized: BOS only where each text starts
    cache = ref_cache.load_cache(path, description)
    assert cache.answers == {"maths": ["42", "7"]}
    assert cache.texts["t1"] == {"first_chunk": 3, "chunks": 2, "tokens": 2 * 16 + 5 + 1}
    for name, wins, exact in zip(["t0", "t1"], windows, live):
        cached = score_text(quant, wins, cache.reference(name))
        assert len(cached.kld) == len(wins) and all(k.shape == (7,) for k in cached.kld)
        a, b = exact.summary(), cached.summary()
        assert a["tokens"] == b["tokens"] == 7 * len(wins)
        assert abs(a["kld_mean"] - b["kld_mean"]) <= 2e-4 * (1 + a["kld_mean"])
        assert abs(np.log(a["ppl_ref"] / b["ppl_ref"])) <= 16 / 65535 / 2 + 1e-5
        assert a["ppl_quant"] == pytest.approx(b["ppl_quant"], rel=1e-6)
        assert a["top1"] == b["top1"]
    stale = [(list(w), f) for w, f in windows[1]]
    stale[0][0][3] += 1
    with pytest.raises(FormatError, match="other tokens"):
        score_text(quant, stale, cache.reference("t1"))


def test_an_interrupted_write_leaves_nothing(tmp_path):
    ref = FakeRunner()
    with pytest.raises(KeyboardInterrupt):
        with ref_cache.CacheWriter(tmp_path / "c.bin", {}, 8, ref.n_vocab, [("t", list(range(16)))]) as writer:
            writer.add_chunk(ref.logits(list(range(7)), score_last=3))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_sidecar_mismatch_is_refused(tmp_path):
    path, description, *_ = write_cache(tmp_path)
    other = json.loads(json.dumps(description))
    other["ctx"] = 32
    message = one_line_error(ref_cache.load_cache, path, other, match="cached for ctx = 16, this run has 32")
    assert message.startswith(str(path))
    other = json.loads(json.dumps(description))
    other["texts"]["t1"] = "0" * 64
    one_line_error(ref_cache.load_cache, path, other, match="cached for texts.t1 = ")
    other["texts"] = {"t0": description["texts"]["t0"]}
    one_line_error(ref_cache.load_cache, path, other, match=r"texts.t1 = .*this run has \"\(absent\)\"")
    other = json.loads(json.dumps(description))
    other["reference"]["ref.gguf"]["bytes"] += 1
    one_line_error(ref_cache.load_cache, path, other, match="cached for reference.ref.gguf.bytes")
    assert ref_cache.load_cache(tmp_path / "none.bin", description) is None
    # a log-prob file that is not the one the sidecar was written with
    (tmp_path / "second").mkdir()
    second, *_ = write_cache(tmp_path / "second", chunks=(2, 2))
    path.write_bytes(second.read_bytes())
    one_line_error(ref_cache.load_cache, path, description, match="not the log-prob file its sidecar")
    ref_cache.sidecar_path(path).unlink()
    one_line_error(ref_cache.load_cache, path, description, match="sidecar cache.bin.json is missing")


def hostile(tmp_path, data: bytes) -> Path:
    path = tmp_path / "hostile.bin"
    path.write_bytes(data)
    return path


def test_hostile_log_prob_files_are_one_line_errors(tmp_path):
    path, *_ = write_cache(tmp_path)
    good = path.read_bytes()
    assert ref_cache.open_log_probs(path).n_chunk == 5
    one_line_error(ref_cache.open_log_probs, hostile(tmp_path, b"_log"), match="too short")
    one_line_error(ref_cache.open_log_probs, hostile(tmp_path, b"_LOGITS_" + good[8:]), match="expected b'_logits_'")
    overflow = struct.pack("<8sIii", b"_logits_", 2**31 - 1, 2**31 - 1, 2**31 - 1) + good[20:]
    one_line_error(ref_cache.open_log_probs, hostile(tmp_path, overflow), match=f"{len(good)} bytes; n_ctx 2147483647")
    wraps = struct.pack("<8sIii", b"_logits_", 2**32 - 1, 5, 5) + good[20:]  # llama reads n_ctx as uint32
    one_line_error(ref_cache.open_log_probs, hostile(tmp_path, wraps), match="expected n_ctx >= 4")
    negative = struct.pack("<8sIii", b"_logits_", 16, -301, 5) + good[20:]
    one_line_error(ref_cache.open_log_probs, hostile(tmp_path, negative), match="n_vocab >= 1")
    one_line_error(ref_cache.open_log_probs, hostile(tmp_path, good[:-2]), match="need")
    bad_token = bytearray(good)
    bad_token[24:28] = struct.pack("<i", 301)
    one_line_error(ref_cache.open_log_probs, hostile(tmp_path, bytes(bad_token)), match="token 1 is 301")
    nan_scale = bytearray(good)
    row = 20 + 4 * 80 + 2 * 7 * ref_cache.row_width(301) * 2 + 2 * ref_cache.row_width(301) * 3  # chunk 2, row 3
    nan_scale[row : row + 4] = struct.pack("<f", float("nan"))
    damaged = ref_cache.open_log_probs(hostile(tmp_path, bytes(nan_scale)))
    damaged.chunk_rows(1)
    one_line_error(damaged.chunk_rows, 2, match="chunk 2 row 3 has scale nan")


# ---------------------------------------------------------------- scoring a text outside qconv eval (its loop is
# evaluate.Reference): the live reference, optionally writing a cache, or a cached one, against one candidate


class LiveReference:
    """The reference model's logits of each window compared with a candidate's; with a writer, each chunk's rows
    are also appended to a reference cache."""

    def __init__(self, runner, writer=None):
        self.runner = runner
        self.writer = writer

    def chunk_stats(self, index: int, window: list[int], first: int, quant_logits: np.ndarray):
        from qconv.runtime.logit_stats import logit_stats

        ref_logits = texts.scored_logits(self.runner, window, first)
        if self.writer is not None:
            self.writer.add_chunk(ref_logits)
        return logit_stats(ref_logits, quant_logits, np.asarray(window[first + 1 :], dtype=np.int32))


def score_text(quant, windows, reference) -> TokenStats:
    """A candidate against a LiveReference or a ref_cache.CachedReference on a text's windows."""
    scores = TokenStats()
    for index, (window, first) in enumerate(windows):
        quant_logits = texts.scored_logits(quant, window, first)
        scores.add_stats(reference.chunk_stats(index, window, first, quant_logits), np.asarray(window[first + 1 :]))
    return scores
