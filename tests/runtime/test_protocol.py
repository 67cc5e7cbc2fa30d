"""One model interface (runtime.protocol.SequenceModel) for the C runtime's Model and ONNX Runtime's OnnxModel:
the same calls mean the same thing in both (a cached prefix kept, cut back, re-evaluated), and generation, chat and
the evaluation runner go through it alone."""

from __future__ import annotations

import numpy as np
import pytest

from qconv.converter.convert import convert_to_gguf
from qconv.samples.synthetic import build_random_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from qconv.converter.onnx_export import OnnxOptions, export_onnx

    tmp = tmp_path_factory.mktemp("protocol")
    folder = build_random_model(tmp / "hf", arch="llama", hidden=128, n_layers=2, ffn=256, vocab=384, seed=2)
    gguf = convert_to_gguf(folder, tmp / "m.gguf", "f32", progress=False).out_path
    export_onnx(folder, tmp / "onnx", OnnxOptions(bits=8, calibrate=False))
    return {"gguf": gguf, "onnx": tmp / "onnx"}


def open_model(models, kind):
    from qconv.runtime import Model, OnnxModel

    return (
        Model(models["gguf"], threads=2, ctx=128, kv_f32=True)
        if kind == "gguf"
        else OnnxModel(models["onnx"], threads=2)
    )


def test_public_imports():
    import qconv.runtime as runtime

    assert {"Model", "OnnxModel", "SequenceModel", "prefill", "generate", "TextStream"} <= set(runtime.__all__)
    with pytest.raises(AttributeError):
        runtime.NoSuchThing  # noqa: B018


@pytest.mark.parametrize("kind", ["gguf", "onnx"])
def test_both_runtimes_answer_the_protocol_alike(models, kind):
    from qconv.runtime import SequenceModel, prefill

    with open_model(models, kind) as model:
        assert isinstance(model, SequenceModel)
        tokens = np.random.default_rng(0).integers(1, model.n_vocab, size=20).tolist()
        every = model.evaluate(tokens, all_logits=True)
        assert every.shape == (20, model.n_vocab) and model.cached() == tokens
        # cut back to 12 tokens and go on: the same logits as the full run, to float tolerance
        assert model.truncate(12) and model.cached() == tokens[:12]
        again = model.evaluate(tokens[12:])
        np.testing.assert_allclose(again, every[-1], rtol=0, atol=2e-4 * np.abs(every[-1]).max())
        # a prompt sharing 15 tokens re-evaluates only what differs (and the last shared one)
        other = tokens[:15] + [3, 4, 5]
        last = prefill(model, other)
        assert model.cached() == other
        model.reset()
        assert model.cached() == [] and not model.truncate(1)  # nothing cached: there is no position 1 to keep
        np.testing.assert_allclose(last, model.evaluate(other), rtol=0, atol=2e-4 * np.abs(last).max())
        assert model.evaluate_batch([(0, [7, 8])])[0].shape == (model.n_vocab,)


@pytest.mark.parametrize("kind", ["gguf", "onnx"])
def test_generate_is_the_protocol_loop(models, kind):
    from qconv.runtime import generate

    with open_model(models, kind) as model:
        ids: list[int] = []
        text = "".join(generate(model, [1, 2, 3], 8, temperature=0, ignore_eos=True, token_ids=ids))
        assert len(ids) == 8 and text == model.tokenizer.decode(ids)
        # the same again reuses the cached prompt and gives the same tokens
        again: list[int] = []
        list(generate(model, [1, 2, 3], 8, temperature=0, ignore_eos=True, token_ids=again))
        assert again == ids


def test_model_chat_streams_the_cli_answer(smollm2_package_gguf):
    """Model.chat renders with the file's template and tokenizes as qrun does: the same greedy answer."""
    import json
    import subprocess
    import sys

    from qconv.runtime import Model

    question = "What is the capital of France?"
    with Model(smollm2_package_gguf, threads=2, ctx=512) as model:
        answer = "".join(model.chat([{"role": "user", "content": question}], 16, temperature=0))
    run = subprocess.run(
        [sys.executable, "-m", "qconv.runtime.cli", str(smollm2_package_gguf), "--prompt", question, "--temp", "0",
         "-n", "16", "-t", "2", "-c", "512", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert answer and answer == json.loads(run.stdout)["text"]
