"""The other kinds of model `qrun serve` takes: a BERT GGUF (the real all-MiniLM-L6-v2: embeddings only), a
`qconv to-onnx` encoder folder, and a `qconv to-onnx` decoder folder (ONNX Runtime, one slot: requests queue)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from qconv.runtime import Model, OnnxModel, cli
from tests.server.conftest import CHAT_SHAPE, openai_client, serving
from tests.server.test_api import metric
from tests.server.test_concurrency import run_together, stream_text

pytest.importorskip("onnxruntime")

TEXTS = ["A man is eating food.", "A man is riding a horse.", "The new movie is awesome.", "Zürich, café, naïve"]


@pytest.fixture(scope="module")
def minilm_gguf(tmp_path_factory) -> Path:
    from qconv.converter.convert import convert_to_gguf
    from qconv.samples.minilm import cached_minilm

    out = tmp_path_factory.mktemp("serve-minilm") / "minilm-f32.gguf"
    return convert_to_gguf(Path(cached_minilm()), out, "f32", progress=False).out_path


def test_minilm_gguf_embeddings(minilm_gguf):
    with Model(minilm_gguf, threads=2) as reference:
        expected = reference.embed(TEXTS)
        ids = [reference.tokenizer.encode_truncated(text, reference.embed_max_tokens) for text in TEXTS]
    with Model(minilm_gguf, threads=2) as model, serving(model, "minilm") as url:
        client = openai_client(url)
        for encoding in ({}, {"encoding_format": "float"}):  # the client asks for base64 unless told
            response = client.embeddings.create(model="minilm", input=TEXTS, **encoding)
            np.testing.assert_array_equal(np.array([d.embedding for d in response.data], dtype=np.float32), expected)
        assert response.usage.prompt_tokens == sum(len(seq) for seq in ids)
        by_ids = client.embeddings.create(model="minilm", input=ids, encoding_format="float")
        np.testing.assert_array_equal(np.array([d.embedding for d in by_ids.data], dtype=np.float32), expected)
        single = client.embeddings.create(model="minilm", input=TEXTS[0])
        np.testing.assert_array_equal(np.array(single.data[0].embedding, dtype=np.float32), expected[0])
        # an embedding model does not generate
        answer = httpx.post(
            f"{url}/v1/chat/completions", json={"model": "minilm", "messages": [{"role": "user", "content": "x"}]}
        )
        assert answer.status_code == 400 and "embedding model" in answer.json()["error"]["message"]
        assert metric(url, "qconv_slots_total") == 0 and metric(url, "qconv_embedded_texts_total") == 13


@pytest.fixture(scope="module")
def onnx_encoder_folder(tmp_path_factory) -> Path:
    from qconv.converter.onnx_export import OnnxOptions, export_onnx
    from qconv.samples.synthetic_encoder import build_random_encoder

    folder = build_random_encoder(tmp_path_factory.mktemp("bert") / "hf", hidden=64, ffn=128, vocab=512)
    out = folder.parent / "bert-onnx"
    export_onnx(folder, out, OnnxOptions(bits=8, calibrate=False, threads=2))
    return out


def test_onnx_encoder_folder_embeddings(onnx_encoder_folder):
    texts = ["hello world", "the quick brown fox", "a b c"]
    expected = OnnxModel(onnx_encoder_folder, threads=2).embed(texts)
    with serving(OnnxModel(onnx_encoder_folder, threads=2), "bert-onnx") as url:
        client = openai_client(url)
        response = client.embeddings.create(model="bert-onnx", input=texts)
        np.testing.assert_array_equal(np.array([d.embedding for d in response.data], dtype=np.float32), expected)
        ids = httpx.post(f"{url}/v1/embeddings", json={"model": "bert-onnx", "input": [[1, 2, 3]]})
        assert ids.status_code == 400 and "texts, not token ids" in ids.json()["error"]["message"]


@pytest.fixture(scope="module")
def onnx_decoder_folder(random_model_factory, tmp_path_factory) -> Path:
    from qconv.converter.onnx_export import OnnxOptions, export_onnx

    out = tmp_path_factory.mktemp("serve-onnx") / "llama-onnx"
    export_onnx(random_model_factory(**CHAT_SHAPE), out, OnnxOptions(bits=8, calibrate=False, threads=2))
    return out


def test_onnx_decoder_folder_answers_as_qrun_and_queues(onnx_decoder_folder):
    result = CliRunner().invoke(
        cli.main, [str(onnx_decoder_folder), "--prompt", "Hello there", "--temp", "0", "-n", "16", "--json"]
    )
    assert result.exit_code == 0, result.output
    expected = json.loads(result.stdout)["text"]
    with OnnxModel(onnx_decoder_folder, threads=2) as model, serving(model, "llama-onnx") as url:
        client = openai_client(url)
        answer = client.chat.completions.create(
            model="llama-onnx", messages=[{"role": "user", "content": "Hello there"}], max_tokens=16, temperature=0
        )
        assert answer.choices[0].message.content == expected
        assert metric(url, "qconv_slots_total") == 1
        alone = [stream_text(client, "llama-onnx", prompt, 12) for prompt in ("One", "Two", "Three")]
        together = run_together(
            lambda i: stream_text(openai_client(url), "llama-onnx", ("One", "Two", "Three")[i], 12), 3
        )
        assert together == alone
        no_embed = httpx.post(f"{url}/v1/embeddings", json={"model": "llama-onnx", "input": "x"})
        assert no_embed.status_code == 400 and "gives no embeddings" in no_embed.json()["error"]["message"]
