"""BERT encoders -> llama.cpp's `bert` GGUF: the real all-MiniLM-L6-v2 folder at f32 and q8_0 (names, shapes,
metadata), the types of each --type, `qconv inspect` on the folder, random BertModel / BertForMaskedLM folders, the
one-line refusals through the CLI; and, as reference checks, llama.cpp's own converter (same tensors and vocabulary)
and llama.cpp running our file against transformers' sentence-transformers pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from qconv.converter.convert import ConvertOptions, convert_to_gguf, make_plan_only
from qconv.formats.gguf_read import read_gguf
from qconv.samples.synthetic_encoder import build_random_encoder
from tests.conftest import DATA, have
from tests.qconv_cli import assert_user_error, run

N_LAYERS, HIDDEN, FFN, VOCAB, POSITIONS = 6, 384, 1536, 30522, 512
PER_BLOCK = (
    "attn_q", "attn_k", "attn_v", "attn_output", "attn_output_norm", "ffn_up", "ffn_down", "layer_output_norm",
)  # fmt: skip
SMALL = dict(hidden=64, n_layers=2, n_heads=4, ffn=128, vocab=256, context_length=64)


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    from qconv.samples.minilm import cached_minilm

    return cached_minilm()


@pytest.fixture(scope="module")
def minilm_f32(minilm_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bert") / "minilm-f32.gguf"
    convert_to_gguf(minilm_dir, out, "f32", progress=False)
    return out


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """GGUF name -> numpy-order shape (rows, columns) of all-MiniLM-L6-v2 in llama.cpp's bert layout."""
    shapes = {
        "token_embd.weight": (VOCAB, HIDDEN),
        "position_embd.weight": (POSITIONS, HIDDEN),
        "token_types.weight": (2, HIDDEN),
        "token_embd_norm.weight": (HIDDEN,),
        "token_embd_norm.bias": (HIDDEN,),
    }
    rows = {"attn_q": HIDDEN, "attn_k": HIDDEN, "attn_v": HIDDEN, "attn_output": HIDDEN, "ffn_up": FFN}
    rows |= {"ffn_down": HIDDEN, "attn_output_norm": HIDDEN, "layer_output_norm": HIDDEN}
    for bid in range(N_LAYERS):
        for name in PER_BLOCK:
            cols = FFN if name == "ffn_down" else HIDDEN
            if name.endswith("_norm"):
                shapes[f"blk.{bid}.{name}.weight"] = (HIDDEN,)
            else:
                shapes[f"blk.{bid}.{name}.weight"] = (rows[name], cols)
            shapes[f"blk.{bid}.{name}.bias"] = (rows[name],)
    return shapes


def test_minilm_f32_tensors(minilm_f32):
    with read_gguf(minilm_f32) as g:
        assert {n: tuple(t.shape) for n, t in g.tensors.items()} == expected_shapes()
        assert {t.type_name for t in g.tensors.values()} == {"F32"}


def test_minilm_f32_metadata(minilm_f32):
    with read_gguf(minilm_f32) as g:
        m = g.metadata
        assert g.architecture == "bert"
        assert (m["bert.context_length"], m["bert.embedding_length"], m["bert.feed_forward_length"]) == (512, 384, 1536)
        assert (m["bert.block_count"], m["bert.attention.head_count"]) == (6, 12)
        assert m["bert.attention.layer_norm_epsilon"] == pytest.approx(1e-12)
        assert m["bert.attention.causal"] is False or m["bert.attention.causal"] == 0
        assert m["bert.pooling_type"] == 1  # mean, from 1_Pooling/config.json
        assert m["tokenizer.ggml.token_type_count"] == 2  # must equal token_types.weight's rows for llama.cpp
        assert bool(m["qconv.embedding.normalize"]) is True  # modules.json's Normalize, though no 2_Normalize/
        assert m["qconv.embedding.max_seq_length"] == 256  # sentence_bert_config.json, not tokenizer.json's 128
        assert (m["tokenizer.ggml.model"], m["tokenizer.ggml.pre"]) == ("bert", "default")
        ids = [
            m[f"tokenizer.ggml.{k}"] for k in ("bos_token_id", "eos_token_id", "seperator_token_id", "unknown_token_id")
        ]
        assert ids == [101, 102, 102, 100]
        assert bool(m["tokenizer.ggml.normalizer.lowercase"]) and bool(m["tokenizer.ggml.normalizer.strip_accents"])
        for key in m:  # no decoder keys
            assert "rope" not in key and "head_count_kv" not in key and "rms" not in key


def test_minilm_q8_0(minilm_dir, tmp_path):
    out = tmp_path / "minilm-q8_0.gguf"
    code, output = run("to-gguf", minilm_dir, "-o", out, "--type", "q8_0", "-q")
    assert code == 0, output
    with read_gguf(out) as g:
        types = {n: t.type_name for n, t in g.tensors.items()}
    assert set(types) == set(expected_shapes())
    for name, type_name in types.items():
        matrix = len(expected_shapes()[name]) == 2
        kept = name in ("position_embd.weight", "token_types.weight")  # llama.cpp never quantizes them
        assert type_name == ("Q8_0" if matrix and not kept else "F32"), name


@pytest.mark.parametrize(
    ("type_name", "expected"),
    [
        ("f16", {"F16": 37, "F32": 64}),
        ("q4_0", {"Q4_0": 36, "Q8_0": 1, "F32": 64}),  # token_embd: the output head's type (no output.weight)
        # 384-wide rows: q4_k falls back to q5_0, q6_k to q8_0, as llama-quantize does; ffn_down (1536) keeps k-quants
        ("q4_k_m", {"Q5_0": 28, "Q4_K": 4, "Q6_K": 2, "Q8_0": 3, "F32": 64}),
    ],
)
def test_plan_types(minilm_dir, type_name, expected):
    plan = make_plan_only(minilm_dir, ConvertOptions(type_name=type_name)).plan
    assert Counter(c.ggml_type.name for c in plan.choices) == expected
    types = {c.name: c.ggml_type.name for c in plan.choices}
    assert types["position_embd.weight"] == types["token_types.weight"] == "F32"
    assert types["token_embd.weight"] == ("F16" if type_name == "f16" else "Q8_0")


def test_inspect_folder_lists_position_ids(minilm_dir):
    code, output = run("inspect", minilm_dir)
    assert code == 0, output
    line = next(line for line in output.splitlines() if "embeddings.position_ids" in line)
    assert "[1, 512]" in line and "I64" in line


@pytest.mark.parametrize("masked_lm", [False, True])
def test_random_bert_converts(tmp_path, masked_lm):
    """BertModel and BertForMaskedLM (`bert.` prefix renamed, `cls.*` and the pooler skipped, position_ids as a
    buffer) give the same GGUF tensors."""
    folder = build_random_encoder(tmp_path / "hf", masked_lm=masked_lm, seed=1, **SMALL)
    out = tmp_path / "bert.gguf"
    code, output = run("to-gguf", folder, "-o", out, "--type", "f16", "-q")
    assert code == 0, output
    with read_gguf(out) as g:
        assert len(g.tensors) == 5 + 2 * 16
        assert not [n for n in g.tensors if "pooler" in n or "cls" in n or "position_ids" in n]
        assert g.metadata["bert.context_length"] == 64


def test_sample_random_bert_cli(tmp_path):
    code, output = run("sample", "random", "--arch", "bert", "-o", tmp_path / "b", "--hidden", "64", "--heads", "4",
                       "--ffn", "128", "--vocab", "256", "--context", "64", "--layers", "1")  # fmt: skip
    assert code == 0, output
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and (tmp_path / "b" / "1_Pooling" / "config.json").is_file()


def _small(tmp_path: Path) -> Path:
    return build_random_encoder(tmp_path / "hf", **SMALL)


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (lambda f: _edit_json(f / "config.json", architectures=["RobertaModel"], model_type="roberta"),
         ("config.json", "'RobertaModel' is not supported", "RoBERTa")),
        (lambda f: _edit_json(f / "config.json", architectures=["XLMRobertaModel"], model_type="xlm-roberta"),
         ("'XLMRobertaModel' is not supported",)),
        (lambda f: _edit_json(f / "config.json", position_embedding_type="relative_key"),
         ("config.json", "position_embedding_type", "relative_key")),
        (lambda f: _edit_json(f / "config.json", hidden_act="gelu_new"), ("hidden_act", "gelu_new")),
        (lambda f: _edit_json(f / "config.json", is_decoder=True), ("is_decoder",)),
        (lambda f: _edit_json(f / "1_Pooling" / "config.json", pooling_mode_mean_tokens=False,
                              pooling_mode_max_tokens=True), ("1_Pooling/config.json", "pooling mode 'max'")),
        (lambda f: _edit_json(f / "tokenizer.json", model={"type": "BPE", "vocab": {}, "merges": []}),
         ("tokenizer.json", "'BPE' is not WordPiece")),
    ],
)  # fmt: skip
def test_refusals_through_the_cli(tmp_path, edit, fragments):
    folder = _small(tmp_path)
    edit(folder)
    out = tmp_path / "out.gguf"
    code, output = run("to-gguf", folder, "-o", out, "--type", "q8_0")
    assert_user_error(code, output, out, *fragments)


def test_weight_stored_as_integers_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = _small(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["embeddings.token_type_embeddings.weight"] = np.zeros((2, 64), dtype=np.int32)
    save_file(tensors, folder / "model.safetensors")
    out = tmp_path / "out.gguf"
    code, output = run("to-gguf", folder, "-o", out)
    assert_user_error(code, output, out, "embeddings.token_type_embeddings.weight", "is I32")


# --- reference checks -----------------------------------------------------------------------------------------------


def _field(reader, key):
    import gguf

    field = reader.fields[key]
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode() for i in field.data]
        return [field.parts[i].tolist() for i in field.data]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0] == gguf.GGUFValueType.STRING else value.tolist()


# Keys only one side writes, each explained in formats/wordpiece_meta.py and formats/gguf_write.py.
ONLY_OURS = {
    "qconv.embedding.normalize", "qconv.embedding.max_seq_length", "tokenizer.ggml.cls_token_id",
    "tokenizer.ggml.normalizer.strip_accents",
}  # fmt: skip
ONLY_LLAMA_CPP = {"tokenizer.ggml.add_sep_token"}  # ignored by WPM encoding
DIFFERENT = {"general.name", "tokenizer.ggml.pre"}  # the model card's name; "jina-v2-en" is ignored for WPM


@pytest.mark.reference
def test_same_as_llama_cpp_converter(minilm_dir, minilm_f32, tmp_path):
    import gguf

    from tests.bench.models import llama_cpp_converter

    converter = llama_cpp_converter()
    if converter is None:
        pytest.skip("llama.cpp's convert_hf_to_gguf.py is not available")
    ref_path = tmp_path / "llama-cpp.gguf"
    subprocess.run([sys.executable, converter, minilm_dir, "--outfile", ref_path, "--outtype", "f32"], check=True,
                   capture_output=True)  # fmt: skip
    ours, ref = gguf.GGUFReader(minilm_f32), gguf.GGUFReader(ref_path)

    def keys(reader):
        return {k for k in reader.fields if not k.startswith(("GGUF.", "general.")) or k == "general.name"}

    assert keys(ours) - keys(ref) == ONLY_OURS
    assert keys(ref) - keys(ours) == ONLY_LLAMA_CPP
    differ = {k for k in keys(ours) & keys(ref) if _field(ours, k) != _field(ref, k)}
    assert differ == DIFFERENT
    ref_tensors = {t.name: t for t in ref.tensors}
    assert {t.name for t in ours.tensors} == set(ref_tensors)
    for t in ours.tensors:
        assert np.array_equal(np.asarray(t.data), np.asarray(ref_tensors[t.name].data)), t.name


def _hf_vectors(minilm_dir: Path, ids: list[list[int]]) -> np.ndarray:
    """sentence-transformers' pipeline done with transformers: BertModel, mean over the attention mask, L2."""
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(minilm_dir).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(ids), 16):
            batch = ids[start : start + 16]
            width = max(len(x) for x in batch)
            tokens = torch.tensor([x + [0] * (width - len(x)) for x in batch])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch])
            hidden = model(input_ids=tokens, attention_mask=mask).last_hidden_state
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def _llama_cpp_vector(llama, ids: list[int]) -> np.ndarray:
    """llama.cpp's pooled vector of exactly these token ids (as Llama.embed does for a text, without re-tokenizing)."""
    import llama_cpp

    llama._batch.reset()
    llama._ctx.kv_cache_clear()
    llama._batch.add_sequence(ids, 0, True)
    llama._ctx.decode(llama._batch)
    vector = np.array(llama_cpp.llama_get_embeddings_seq(llama._ctx.ctx, 0)[: llama.n_embd()], dtype=np.float64)
    llama._batch.reset()
    llama._ctx.kv_cache_clear()
    return vector / np.linalg.norm(vector)


@pytest.mark.reference
@pytest.mark.skipif(not (have("llama_cpp") and have("transformers") and have("torch")), reason="needs the references")
def test_llama_cpp_runs_our_gguf_like_transformers(minilm_dir, minilm_f32):
    """llama.cpp (embedding=True) loads our f32 GGUF; wherever its WordPiece ids equal HF's (truncated to 256 as
    sentence_bert_config.json says), its vector is transformers' at cosine >= 0.999. Where the ids differ, the
    sentences and the first difference are printed (pytest -s)."""
    import llama_cpp
    from transformers import AutoTokenizer

    texts = (DATA / "embed_sentences.txt").read_text(encoding="utf-8").split("\n")[:-1]
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    llama = llama_cpp.Llama(model_path=str(minilm_f32), embedding=True, n_ctx=512, n_batch=512, verbose=False)
    assert llama.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_MEAN
    same, differ = [], []
    for text in texts:
        hf = tokenizer(text, truncation=True, max_length=256)["input_ids"]
        ours = llama.tokenize(text.encode(), add_bos=True, special=False)
        if len(ours) > 256:  # HF's truncation: the text's pieces cut, [SEP] kept
            ours = ours[:255] + [ours[-1]]
        (same if ours == hf else differ).append((text, hf, ours))
    for text, hf, ours in differ:
        at = next((i for i, (a, b) in enumerate(zip(hf, ours, strict=False)) if a != b), min(len(hf), len(ours)))
        print(f"tokens differ at {at}: {text[:60]!r}: HF {tokenizer.convert_ids_to_tokens(hf[at : at + 3])} "
              f"llama.cpp {[llama.detokenize([t]).decode(errors='replace') for t in ours[at : at + 3]]}")  # fmt: skip
    print(f"{len(same)} of {len(texts)} texts tokenize the same")
    assert len(same) >= 0.9 * len(texts)
    reference = _hf_vectors(minilm_dir, [hf for _, hf, _ in same])
    cosines = np.array([_llama_cpp_vector(llama, ids) @ ref for (_, ids, _), ref in zip(same, reference, strict=True)])
    print(f"cosine llama.cpp vs transformers: min {cosines.min():.6f}, mean {cosines.mean():.6f}")
    assert cosines.min() >= 0.999


@pytest.mark.reference
@pytest.mark.skipif(not have("llama_cpp"), reason="needs llama-cpp-python")
def test_llama_cpp_loads_random_bert(tmp_path):
    """The random BertForMaskedLM sample at q8_0: llama.cpp loads it and tokenizes as transformers' tokenizer does."""
    import llama_cpp
    from transformers import AutoTokenizer

    folder = build_random_encoder(tmp_path / "hf", masked_lm=True, **SMALL)
    out = tmp_path / "bert.gguf"
    convert_to_gguf(folder, out, "q8_0", progress=False)
    llama = llama_cpp.Llama(model_path=str(out), embedding=True, n_ctx=64, verbose=False)
    text = "The capital of France is Paris, déjà vu!"
    assert llama.tokenize(text.encode(), add_bos=True) == AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
    assert len(llama.embed(text)) == SMALL["hidden"]
    shutil.rmtree(folder)


def test_bundle_accepts_bert(tmp_path):
    """qrun-native runs bert GGUFs: bundle takes them, and run.sh's default asks for a sentence vector."""
    import tarfile

    from qconv.converter.bundle import make_bundle

    folder = build_random_encoder(tmp_path / "hf", **SMALL)
    model = tmp_path / "bert.gguf"
    convert_to_gguf(folder, model, "q8_0", progress=False)
    binary = tmp_path / "qrun-native"
    binary.write_bytes(b"#!/bin/sh\n")
    out = tmp_path / "bundle.tar.gz"
    make_bundle(model, "x86_64", out, binary=binary)
    with tarfile.open(out) as tar:
        run_sh = tar.extractfile("qconv-bundle-x86_64/run.sh").read().decode()
    assert '--embed "' in run_sh and " -p " not in run_sh


@pytest.mark.reference
@pytest.mark.parametrize("type_name", ["q8_0", "q4_0", "q4_k_m"])
def test_types_as_llama_quantize(minilm_dir, minilm_f32, tmp_path, type_name):
    """llama.cpp's own quantization of our f32 file picks the types our plan picks, tensor by tensor (token_embd as
    the output head, position_embd and token_types kept f32, 384-wide rows falling back)."""
    from tests.llama_ref import quantize_file

    quantized = quantize_file(minilm_f32, tmp_path / f"llama-{type_name}.gguf", type_name)
    with read_gguf(quantized) as g:
        theirs = {n: t.type_name for n, t in g.tensors.items()}
    plan = make_plan_only(minilm_dir, ConvertOptions(type_name=type_name)).plan
    assert {c.name: c.ggml_type.name for c in plan.choices} == theirs
