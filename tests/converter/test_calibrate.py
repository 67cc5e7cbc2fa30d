"""qconv calibrate through the C runtime: chunking, input errors, the file's shape, and the collected sums against
an independent computation of the first layer's attention input."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from qconv.converter import calibrate as cal
from qconv.formats.errors import FormatError
from tests.conftest import have

needs_runtime = pytest.mark.skipif(not have("qconv.runtime.model"), reason="the runtime's Model is not built yet")
MATMULS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def test_chunks_are_whole_and_start_with_bos():
    tokens = list(range(10, 35))
    assert cal.chunks_of(tokens, 10, None) == [list(range(10, 20)), list(range(20, 30))]
    assert cal.chunks_of(tokens, 10, 1) == [[1, *range(11, 20)], [1, *range(21, 30)]]
    assert cal.chunks_of(tokens[:9], 10, None) == []


def test_calibration_data_from_files_and_folders(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("second")
    (tmp_path / "d" / "a.md").write_text("first")
    (tmp_path / "d" / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "c.txt").write_text("third")
    data = cal.read_calibration_data([tmp_path / "d", tmp_path / "c.txt"])
    assert data.text == "first\n\nsecond\n\nthird"
    assert cal.read_calibration_data(None).name == cal.BUILTIN
    with pytest.raises(FormatError, match="no such file"):
        cal.read_calibration_data([tmp_path / "missing"])
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FormatError, match="not UTF-8"):
        cal.read_calibration_data([tmp_path / "bad.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no text files"):
        cal.read_calibration_data([tmp_path / "empty"])


@pytest.fixture(scope="module")
def tiny_model(random_model_factory):
    return random_model_factory(arch="llama", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, vocab=512)


@needs_runtime
def test_text_shorter_than_a_context_window_is_an_error(tiny_model, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("only a few words")
    with pytest.raises(FormatError, match="shorter than one context window of 512"):
        cal.calibrate(tiny_model, tmp_path / "im.gguf", [short], ctx=512)
    assert not (tmp_path / "im.gguf").exists()


@needs_runtime
def test_imatrix_names_every_matmul_and_counts_tokens(tiny_model, tmp_path):
    out = tmp_path / "imatrix.gguf"
    imatrix = cal.calibrate(tiny_model, out, None, ctx=64, max_chunks=3, threads=2)
    reader = gguf.GGUFReader(str(out))
    names = {t.name for t in reader.tensors}
    expected = {f"blk.{i}.{role}.weight" for i in range(2) for role in MATMULS}
    assert {n.removesuffix(".in_sum2") for n in names if n.endswith(".in_sum2")} == expected
    assert {n.removesuffix(".counts") for n in names if n.endswith(".counts")} == expected
    counts = {t.name: float(np.asarray(t.data).reshape(-1)[0]) for t in reader.tensors if t.name.endswith(".counts")}
    assert set(counts.values()) == {3 * 64.0}
    assert imatrix.chunk_count == 3 and imatrix.datasets == [cal.BUILTIN]
    sums = {t.name: np.asarray(t.data) for t in reader.tensors if t.name.endswith(".in_sum2")}
    assert sums["blk.0.ffn_down.weight.in_sum2"].size == 128 and all((v > 0).all() for v in sums.values())


@needs_runtime
def test_first_layer_sums_equal_the_normed_embeddings(smollm2_dir, tmp_path):
    """attn_q/k/v of layer 0 see rmsnorm(embedding) * attn_norm: computed here from the GGUF with numpy."""
    from qconv.converter.convert import convert_to_gguf
    from qconv.converter.quality.runner import Runner
    from qconv.runtime.imatrix import ImatrixCollector

    f32 = tmp_path / "f32.gguf"
    convert_to_gguf(smollm2_dir, f32, "f32", progress=False)
    runner = Runner(f32, 128, 2)
    tokens = runner.tokenize("The lighthouse keeper kept a ledger of every ship that passed the headland.", False)
    with ImatrixCollector(runner.model) as collector:
        runner.run(tokens)
        stats = collector.stats()
    reader = gguf.GGUFReader(str(f32))
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    eps = float(reader.fields["llama.attention.layer_norm_rms_epsilon"].parts[-1][0])
    x = tensors["token_embd.weight"][tokens].astype(np.float64)
    normed = x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * tensors["blk.0.attn_norm.weight"]
    expected = (normed**2).sum(0)
    for role in ("attn_q", "attn_k", "attn_v"):
        s = stats[f"blk.0.{role}.weight"]
        assert s.count == len(tokens)
        np.testing.assert_allclose(s.sums, expected, rtol=1e-4)


TRAFFIC = [
    {"prompt": "How do I reverse a list in Python?", "user": "a"},  # a log's own keys are ignored
    {"messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven."}]},
    {"prompt": "Once upon a time", "raw": True, "expected": "there"},
]


def write_traffic(path, items=TRAFFIC):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_jsonl_items_without_a_template_are_their_prompt_text(tmp_path):
    traffic = write_traffic(tmp_path / "traffic.jsonl")
    (tmp_path / "notes.txt").write_text("plain notes")
    data = cal.read_calibration_data([traffic, tmp_path / "notes.txt"])
    assert data.text == "How do I reverse a list in Python?\n\nName a prime.\nSeven.\n\nOnce upon a time\n\nplain notes"
    assert not data.parse_special


def test_a_bad_jsonl_line_names_file_and_line(tmp_path):
    traffic = write_traffic(tmp_path / "traffic.jsonl", [TRAFFIC[0], {"promt": "typo"}])
    with pytest.raises(FormatError, match=r"traffic\.jsonl:2: no prompt or messages \(exactly one of"):
        cal.read_calibration_data([traffic])
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "log.jsonl").write_text('{"prompt": "fine"}\n{"prompt": "cut off\n')
    with pytest.raises(FormatError, match=r"log\.jsonl:2: not JSON: "):
        cal.read_calibration_data([tmp_path / "folder"])


@pytest.fixture(scope="module")
def smollm2(smollm2_package_gguf):
    from qconv.runtime.model import Model

    return Model(smollm2_package_gguf, threads=1, ctx=256)


@needs_runtime
def test_jsonl_items_are_rendered_with_the_models_template(smollm2, tmp_path):
    traffic = write_traffic(tmp_path / "traffic.jsonl")
    data = cal.read_calibration_data([traffic], smollm2.render_chat)
    first = smollm2.render_chat([{"role": "user", "content": TRAFFIC[0]["prompt"]}])
    second = smollm2.render_chat(TRAFFIC[1]["messages"])
    assert data.text == f"{first}\n\n{second}\n\nOnce upon a time"  # the raw item stays plain text
    assert "<|im_start|>user\nHow do I reverse a list in Python?<|im_end|>" in data.text
    assert "<|im_start|>assistant\nSeven.<|im_end|>" in data.text
    assert data.parse_special


@needs_runtime
def test_calibration_over_jsonl_reads_the_template_markers_as_special_tokens(smollm2_package_gguf, smollm2, tmp_path):
    traffic = write_traffic(tmp_path / "traffic.jsonl", TRAFFIC * 4)
    imatrix = cal.calibrate(smollm2_package_gguf, tmp_path / "im.gguf", [traffic], ctx=16, threads=1)
    text = cal.read_calibration_data([traffic], smollm2.render_chat).text
    as_chat = smollm2.tokenize(text, add_special=False, parse_special=True)
    as_text = smollm2.tokenize(text, add_special=False, parse_special=False)
    assert len(as_chat) // 16 != len(as_text) // 16  # the two readings give different chunk counts
    assert imatrix.chunk_count == len(as_chat) // 16
    assert imatrix.datasets == [str(traffic)]
