"""Embeddings in the C runtime: the real all-MiniLM-L6-v2 converted by qconv (bert encoder: Model.embed, qrun and
qrun-native --embed-file) and a random llama (decoders answer embed too: mean of the rows after the final norm).

The references are transformers' BertModel / LlamaModel run the way sentence-transformers pools: mean over the
tokens, then L2 normalisation, with the Hugging Face tokenizer's ids (truncated at max_seq_length 256)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qconv.converter.convert import convert_to_gguf
from qconv.formats.errors import FormatError
from qconv.runtime.model import Model
from tests.conftest import DATA, requires_torch

MAX_SEQ = 256  # sentence_bert_config.json's max_seq_length


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    from qconv.samples.minilm import cached_minilm

    return Path(cached_minilm())


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return (DATA / "embed_sentences.txt").read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture(scope="module")
def minilm_f32(minilm_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("minilm") / "minilm-f32.gguf"
    convert_to_gguf(minilm_dir, out, "f32", progress=False)
    return out


@pytest.fixture(scope="module")
def minilm(minilm_f32) -> Model:
    return Model(minilm_f32, threads=2)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ---- the encoder without references ----


def test_encoder_shape_and_metadata(minilm):
    assert minilm.is_encoder and minilm.n_embd == 384 and minilm.embed_max_tokens == MAX_SEQ
    vectors = minilm.embed(["Hello, world!", "", "Café crème brûlée"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)  # qconv.embedding.normalize
    assert cosines(vectors[:1], vectors[2:]) < 0.9  # different texts, different vectors


def test_batch_of_mixed_lengths_equals_one_at_a_time(minilm, sentences):
    """Sequences concatenated into one set of rows do not see each other: the vectors are those of each text
    alone (texts from 3 to 256 tokens, the over-long ones cut)."""
    texts = sentences[:24] + [s for s in sentences if len(s) > 1000][:4]
    batched = minilm.embed(texts, batch_size=32)
    alone = minilm.embed(texts, batch_size=1)
    assert float(np.abs(batched - alone).max()) <= 1e-6


def test_encoder_refuses_generation(minilm):
    with pytest.raises(FormatError, match="bert is an embedding model"):
        minilm.logits([101, 102])
    with pytest.raises(FormatError, match="embedding model"):
        minilm.generate("hello")


def test_embed_tokens_checks_lengths(minilm):
    with pytest.raises(FormatError, match="sequence 1 has 257 tokens"):
        minilm.embed_tokens([[101, 102], [101] * 257])
    with pytest.raises(FormatError, match="outside the vocabulary"):
        minilm.embed_tokens([[101, 40000, 102]])


def cli_vectors(stdout: str) -> np.ndarray:
    return np.array([json.loads(line) for line in stdout.splitlines()], dtype=np.float32)


def test_qrun_and_qrun_native_print_model_embed(minilm, minilm_f32, sentences, qrun_native, tmp_path):
    """Both programs print, byte for byte, the same lines, and they read back as Model.embed's float32 vectors."""
    texts = sentences[:40]
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    args = [str(minilm_f32), "--embed-file", str(texts_file), "-t", "2"]
    py = subprocess.run([sys.executable, "-m", "qconv.runtime.cli", *args], capture_output=True, text=True)
    native = subprocess.run([str(qrun_native), *args], capture_output=True, text=True)
    assert py.returncode == 0 and native.returncode == 0, py.stderr + native.stderr
    assert py.stdout == native.stdout
    assert "texts/s" in native.stderr.splitlines()[-1]
    np.testing.assert_array_equal(cli_vectors(py.stdout), minilm.embed(texts))
    one = subprocess.run([str(qrun_native), str(minilm_f32), "--embed", texts[3]], capture_output=True, text=True)
    np.testing.assert_array_equal(cli_vectors(one.stdout)[0], minilm.embed([texts[3]])[0])


def test_qrun_refuses_a_prompt_on_an_encoder(minilm_f32, qrun_native):
    py = subprocess.run(
        [sys.executable, "-m", "qconv.runtime.cli", str(minilm_f32), "-p", "hi"], capture_output=True, text=True
    )
    native = subprocess.run([str(qrun_native), str(minilm_f32), "-p", "hi"], capture_output=True, text=True)
    for run in (py, native):
        assert run.returncode == 1 and "embedding model" in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1


# ---- against transformers ----


def bert_reference(folder: Path, texts: list[str]) -> np.ndarray:
    """sentence-transformers' pipeline with transformers: HF tokenizer ids cut at 256 (specials kept), BertModel,
    mean over the tokens, L2 normalisation."""
    import torch
    from tokenizers import Tokenizer
    from transformers import BertModel

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_SEQ)
    model = BertModel.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text).ids])
            hidden = model(ids).last_hidden_state[0].mean(0)
            out.append(torch.nn.functional.normalize(hidden, dim=0).numpy())
    return np.array(out)


@pytest.fixture(scope="module")
def bert_ref(minilm_dir, sentences) -> np.ndarray:
    return bert_reference(minilm_dir, sentences)


@pytest.mark.reference
@requires_torch
def test_f32_equals_transformers(minilm, bert_ref, sentences):
    """Every sentence (accents, CJK, emoji, code, empty-ish, over-length) at cosine >= 0.9999."""
    cos = cosines(minilm.embed(sentences), bert_ref)
    assert len(sentences) >= 200
    worst = int(cos.argmin())
    print(f"\nf32 vs transformers: min {cos.min():.7f} mean {cos.mean():.7f} over {len(cos)} sentences")
    assert cos.min() >= 0.9999, (worst, sentences[worst][:80])


@pytest.mark.reference
@requires_torch
def test_quantized_vs_transformers(minilm_dir, bert_ref, sentences, tmp_path):
    """q8_0 and the 4-bit types against the f32 reference (printed for the report): q8_0 at cosine >= 0.999 on
    every sentence. Encoders multiply f32 activations (qrt_select_matmul_float): with q8_0 activations, as
    llama.cpp runs them, BERT's LayerNorm outliers sharing a block scale take the worst short texts to 0.9976."""
    figures = {}
    for type_name in ("q8_0", "q4_k_m", "q4_0"):
        path = tmp_path / f"minilm-{type_name}.gguf"
        convert_to_gguf(minilm_dir, path, type_name, progress=False)
        cos = cosines(Model(path, threads=2).embed(sentences), bert_ref)
        figures[type_name] = (float(cos.min()), float(cos.mean()))
        path.unlink()
    print("\n" + "\n".join(f"{t}: min {lo:.5f} mean {mean:.5f}" for t, (lo, mean) in figures.items()))
    assert figures["q8_0"][0] >= 0.999
    assert figures["q4_k_m"][1] >= 0.98 and figures["q4_0"][1] >= 0.95


@pytest.fixture(scope="module")
def random_llama(tmp_path_factory) -> tuple[Path, Path]:
    from qconv.samples.synthetic import build_random_model

    out = tmp_path_factory.mktemp("llama")
    folder = build_random_model(out / "hf", arch="llama", dtype="f32", seed=3)
    gguf = out / "llama-f32.gguf"
    convert_to_gguf(folder, gguf, "f32", progress=False)
    return folder, gguf


@pytest.mark.reference
@requires_torch
def test_decoder_embed_is_mean_of_final_norm_rows(random_llama):
    """A llama answers embed: its rows after the final norm (transformers' last_hidden_state), mean-pooled and
    normalised, each sequence from an empty cache; generation afterwards starts from an empty cache too."""
    import torch
    from transformers import AutoModel

    folder, gguf = random_llama
    rng = np.random.default_rng(5)
    sequences = [[int(t) for t in rng.integers(3, 500, n)] for n in (1, 7, 70, 150)]  # 70, 150: several chunks
    model = Model(gguf, threads=2, ctx=256, kv_f32=True)
    logits_before = model.logits(sequences[1])
    ours = model.embed_tokens(sequences)
    ref_model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = np.array(
            [
                torch.nn.functional.normalize(ref_model(torch.tensor([s])).last_hidden_state[0].mean(0), dim=0).numpy()
                for s in sequences
            ]
        )
    cos = cosines(ours, ref)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(model.logits(sequences[1]), logits_before)
    assert model.embed(["some text"]).shape == (1, model.n_embd)


@pytest.fixture(scope="module")
def random_encoders(tmp_path_factory) -> dict[str | None, tuple[Path, Path]]:
    """Random BERT folders pooling by the first and by the last token, unnormalised, and one with no
    sentence-transformers modules (no pooling key in the GGUF), each converted at f32."""
    from qconv.samples.synthetic_encoder import build_random_encoder

    out = tmp_path_factory.mktemp("encoders")
    built = {}
    for pooling in ("cls", "lasttoken", None):
        folder = build_random_encoder(out / f"hf-{pooling}", pooling=pooling, normalize=False, seed=4)
        gguf = out / f"{pooling}.gguf"
        convert_to_gguf(folder, gguf, "f32", progress=False)
        built[pooling] = folder, gguf
    return built


def test_no_pooling_refuses_embed(random_encoders):
    model = Model(random_encoders[None][1], threads=2)
    with pytest.raises(FormatError, match=r"pooling_type is absent or 0 \(none\)"):
        model.embed(["a text"])


@pytest.mark.reference
@requires_torch
@pytest.mark.parametrize("pooling", ["cls", "lasttoken"])
def test_cls_and_last_pooling_unnormalised(random_encoders, pooling):
    import torch
    from transformers import BertModel

    folder, gguf = random_encoders[pooling]
    rng = np.random.default_rng(2)
    sequences = [[2] + [int(t) for t in rng.integers(5, 500, n)] + [3] for n in (0, 5, 40, 100)]
    ours = Model(gguf, threads=2).embed_tokens(sequences)
    model = BertModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        rows = [model(torch.tensor([s])).last_hidden_state[0] for s in sequences]
    ref = np.array([(r[0] if pooling == "cls" else r[-1]).numpy() for r in rows])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-4 * float(np.abs(ref).max()))
