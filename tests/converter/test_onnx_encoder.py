"""to-onnx on BERT encoders: sentence-transformers' ONNX folder layout, the graph (float vs transformers, one
MatMulNBits per linear layer), OnnxModel.embed against the float32 sentence-transformers pipeline on the real
MiniLM folder at 8 and 4 bits, and the folders refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qconv.converter.cli import main as qconv_main
from qconv.converter.onnx_export import OnnxOptions, export_onnx
from qconv.runtime.onnx_backend import OnnxModel

pytest.importorskip("onnxruntime")

SENTENCES = Path(__file__).resolve().parents[1] / "data" / "embed_sentences.txt"
LAYOUT = (
    "onnx/model.onnx", "tokenizer.gguf", "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
    "special_tokens_map.json", "modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
    "config_sentence_transformers.json",
)  # fmt: skip


def sentences() -> list[str]:
    """Every 4th text of the shared embedding sentences (63: prose, accents, CJK, emoji, code, empty-ish, over
    256 pieces), so the checks stay cheap."""
    return SENTENCES.read_text(encoding="utf-8").split("\n")[:-1][::4]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm() -> Path:
    from qconv.samples.minilm import cached_minilm

    return cached_minilm()


@pytest.fixture(scope="module")
def minilm_8bit(minilm, tmp_path_factory) -> Path:
    """The default export (calibrated on the built-in text) at 8 bits, through the API."""
    out = tmp_path_factory.mktemp("onnx8") / "minilm-8"
    export_onnx(minilm, out, OnnxOptions(bits=8, threads=2))
    return out


@pytest.fixture(scope="module")
def minilm_4bit(minilm, tmp_path_factory) -> Path:
    """4 bits through the command, without calibration."""
    out = tmp_path_factory.mktemp("onnx4") / "minilm-4"
    result = CliRunner().invoke(
        qconv_main, ["to-onnx", str(minilm), "-o", str(out), "--bits", "4", "--block-size", "32", "--no-calibrate",
                     "-t", "2", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def reference_vectors(minilm) -> np.ndarray:
    """sentence-transformers' float32 pipeline on the original folder (BertModel, mean pooling, Normalize, 256)."""
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm), device="cpu")
    assert model.max_seq_length == 256
    return model.encode(sentences(), batch_size=32, convert_to_numpy=True)


def test_layout(minilm, minilm_8bit):
    """sentence-transformers' ONNX layout; module configs and tokenizer files copied as they are."""
    for name in LAYOUT:
        assert (minilm_8bit / name).is_file(), name
    for name in LAYOUT[2:]:
        assert (minilm_8bit / name).read_bytes() == (minilm / name).read_bytes(), name
    model = OnnxModel(minilm_8bit, threads=2)
    assert model.is_encoder and model.n_embd == 384 and model.max_tokens == 256
    import onnx

    metadata = {
        p.key: p.value for p in onnx.load(minilm_8bit / "onnx/model.onnx", load_external_data=False).metadata_props
    }
    assert metadata["qconv.block_size"] == "16" and metadata["qconv.bits"] == "8"  # the encoders' default blocks


def test_truncation_is_max_seq_length(minilm_8bit):
    """sentence_bert_config.json's 256, not tokenizer.json's own 128; ids equal HF's tokenizer of the folder."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_8bit))
    model = OnnxModel(minilm_8bit, threads=2)
    texts = sentences()
    lengths = [len(model.tokenize(t)) for t in texts]
    assert max(lengths) == 256
    for text in texts:
        assert model.tokenize(text) == hf(text, truncation=True, max_length=256)["input_ids"]


def test_every_linear_layer_is_matmulnbits(minilm_4bit, tmp_path):
    """6 layers x (q, k, v, attention output, FFN up, down) = 36 MatMulNBits after ONNX Runtime's fusion; no float
    weight matrix is left (the word table's lookup dequantizes gathered rows only)."""
    from tests.onnx.conftest import float_initializer_shapes, matmulnbits_shapes, optimized_graph

    graph = optimized_graph(minilm_4bit / "onnx", tmp_path)
    expected = [(384, 384)] * 4 + [(384, 1536), (1536, 384)]
    assert matmulnbits_shapes(graph) == sorted(expected * 6)
    assert not {n.op_type for n in graph.graph.node} & {"MatMul", "FusedMatMul", "Gemm"}
    assert not float_initializer_shapes(graph) & {(384, 384), (384, 1536), (1536, 384), (30522, 384)}


def test_batches_and_order(minilm_8bit):
    model = OnnxModel(minilm_8bit, threads=2)
    texts = sentences()[:12]
    batched = model.embed(texts)
    single = np.stack([model.embed([t], batch_size=1)[0] for t in texts])
    assert batched.shape == (12, 384) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)  # modules.json: Normalize
    assert model.embed([]).shape == (0, 384)


@pytest.mark.reference
def test_vectors_against_float32(minilm_8bit, minilm_4bit, reference_vectors):
    """8 bits: every sentence at cosine >= 0.999 to sentence-transformers' float32 vectors; 4 bits reported."""
    texts = sentences()
    assert len(texts) >= 50
    figures = {}
    for bits, folder in ((8, minilm_8bit), (4, minilm_4bit)):
        found = cosines(OnnxModel(folder, threads=2).embed(texts), reference_vectors)
        figures[bits] = found
        print(f"\nMiniLM to-onnx {bits}-bit: cosine min {found.min():.5f} mean {found.mean():.5f} ({len(texts)} texts)")
    assert figures[8].min() >= 0.999
    assert figures[4].mean() >= 0.95  # measured 0.967 (--no-calibrate); a broken 4-bit path is far below


@pytest.mark.reference
def test_sentence_transformers_onnx_backend(minilm_8bit, minilm_4bit, reference_vectors, tmp_path):
    """SentenceTransformer(dir, backend="onnx") loads the folder (in the venv of tests/st_onnx_env.py: its ONNX
    backend needs optimum-onnx, which pins transformers < 4.58). The 8-bit folder (the encoder defaults: blocks of
    16, q/k/v and ffn_up inputs smoothed) is at cosine >= 0.999 to the float32 pipeline on every text with ONNX
    Runtime's default MatMulNBits accuracy level (int8 inputs; blocks of 32 unsmoothed: 0.998) and in float32
    (accuracy level 1, as OnnxModel runs them, where its vectors are OnnxModel's)."""
    from tests import st_onnx_env

    texts = sentences()
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    for bits, folder in ((8, minilm_8bit), (4, minilm_4bit)):
        for level in ("1", "default"):
            out = tmp_path / f"st-{bits}-{level}.npy"
            loaded = st_onnx_env.encode(folder, texts_file, out, level)
            assert loaded["max_seq_length"] == 256 and loaded["modules"][1:] == ["Pooling", "Normalize"], loaded
            found = cosines(np.load(out), reference_vectors)
            print(
                f"\nSentenceTransformer(backend='onnx') {bits}-bit, MatMulNBits accuracy level {level}: "
                f"cosine min {found.min():.5f} mean {found.mean():.5f}"
            )
            if level == "1":
                ours = OnnxModel(folder, threads=2).embed(texts)
                np.testing.assert_allclose(np.load(out), ours, atol=1e-5)
            if bits == 8:
                assert found.min() >= 0.999  # measured 0.99909 at the default level, 0.99956 in float32


@pytest.mark.reference
def test_float_graph_equals_transformers(tmp_path):
    """quantize=False on a random BERT (both opsets): last_hidden_state equals transformers' BertModel on a padded
    batch with token types, and OnnxModel's pooled vectors its masked mean."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import onnxruntime as ort

    from qconv.samples.synthetic_encoder import build_random_encoder

    src = build_random_encoder(tmp_path / "bert", hidden=64, n_layers=2, n_heads=4, ffn=128, vocab=512)
    hf = transformers.BertModel.from_pretrained(str(src), attn_implementation="eager").eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 512, size=(3, 11))
    mask = np.ones_like(ids)
    mask[1, 7:], mask[2, 3:] = 0, 0
    types = np.zeros_like(ids)
    types[0, 5:] = 1
    with torch.no_grad():
        expected = hf(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types)
        )
    expected = expected.last_hidden_state.numpy()
    for opset in (21, 23):
        out = tmp_path / f"float-{opset}"
        export_onnx(src, out, OnnxOptions(quantize=False, opset=opset))
        session = ort.InferenceSession(str(out / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
        found = session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        valid = mask[..., None].astype(bool)
        np.testing.assert_allclose(np.where(valid, found[0], 0), np.where(valid, expected, 0), atol=2e-5)


def _refused(args: list[str]) -> str:
    result = CliRunner().invoke(qconv_main, ["to-onnx", *args])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_roberta_refused(tmp_path):
    src = tmp_path / "roberta"
    src.mkdir()
    config = {"architectures": ["RobertaModel"], "model_type": "roberta", "hidden_size": 64}
    (src / "config.json").write_text(json.dumps(config))
    assert "RobertaModel" in _refused([str(src), "-o", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_unsupported_modules_refused(tmp_path):
    from qconv.samples.synthetic_encoder import build_random_encoder

    src = build_random_encoder(tmp_path / "bert", hidden=64, n_layers=1, n_heads=4, ffn=128, vocab=512)
    modules = json.loads((src / "modules.json").read_text())
    modules.append({"idx": 9, "name": "9", "path": "9_Dense", "type": "sentence_transformers.models.Dense"})
    (src / "modules.json").write_text(json.dumps(modules))
    assert "Dense" in _refused([str(src), "-o", str(tmp_path / "out"), "--no-calibrate"])
    assert "--fuse-linear" in _refused([str(src), "-o", str(tmp_path / "out2"), "--fuse-linear"])
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_plain_bert_gets_mean_pooling(tmp_path):
    """A folder without sentence-transformers files gets what sentence-transformers builds for it: mean pooling,
    not normalised."""
    from qconv.samples.synthetic_encoder import build_random_encoder

    src = build_random_encoder(tmp_path / "bert", hidden=64, n_layers=1, n_heads=4, ffn=128, vocab=512, pooling=None)
    out = tmp_path / "out"
    export_onnx(src, out, OnnxOptions(bits=8, calibrate=False))
    model = OnnxModel(out, threads=1)
    vectors = model.embed(["hello world", "a"])
    assert model.pooling == 1 and not model.normalize
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
