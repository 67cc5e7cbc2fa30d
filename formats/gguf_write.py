"""Streamed GGUF writing: metadata and the tensor table first, then tensor data one tensor at a time.

The file is written under a temporary name beside the target and renamed only when complete (formats.atomic_write),
so a failed or interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np

from qconv.formats.atomic_write import AtomicFile, check_output_file, disk_full_error
from qconv.formats.errors import FormatError
from qconv.formats.gguf_read import GGUFFile
from qconv.formats.hf_config import ModelSpec


def add_model_metadata(writer: gguf.GGUFWriter, spec: ModelSpec) -> None:
    """The hyperparameters, under the keys llama.cpp reads for spec.gguf_arch (as its convert_hf_to_gguf.py
    writes them)."""
    writer.add_name(spec.name)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.hidden)
    writer.add_block_count(spec.n_layers)
    writer.add_feed_forward_length(spec.ffn)
    writer.add_head_count(spec.n_heads)
    if spec.arch.encoder:
        add_encoder_metadata(writer, spec)
        return
    writer.add_head_count_kv(spec.n_kv_heads)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_rope_dimension_count(spec.rotary_dim)
    writer.add_vocab_size(spec.vocab_size)
    if spec.head_dim != spec.hidden // spec.n_heads or spec.arch.qk_norm:
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
    if spec.arch.sliding_window_key:
        writer.add_sliding_window(spec.sliding_window or 0)  # 0: none (llama.cpp's phi3 converter)
    if spec.rope_theta_swa is not None:
        writer.add_rope_freq_base_swa(spec.rope_theta_swa)
    if spec.final_logit_softcapping is not None:
        writer.add_final_logit_softcapping(spec.final_logit_softcapping)
    if spec.arch.moe:
        writer.add_expert_count(spec.n_experts)
        writer.add_expert_used_count(spec.n_experts_used)
        writer.add_expert_feed_forward_length(spec.expert_ffn)
    scaling = spec.rope_scaling
    kind = scaling.get("rope_type")
    if spec.original_context_length is not None and kind != "longrope":
        writer.add_rope_scaling_orig_ctx_len(spec.original_context_length)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    elif kind == "longrope":
        # the factors themselves are the rope_factors_long/short tensors
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
        writer.add_rope_scaling_attn_factors(longrope_attention_factor(spec))
    # llama3 scaling is carried by the rope_freqs tensor (llama3_rope_factors), not by keys


# qconv's own keys for sentence embeddings (llama.cpp ignores them)
EMBEDDING_NORMALIZE = "qconv.embedding.normalize"  # bool: L2-normalise the pooled vector
EMBEDDING_MAX_SEQ_LENGTH = "qconv.embedding.max_seq_length"  # u32: tokens per text, [CLS] and [SEP] included


def add_encoder_metadata(writer: gguf.GGUFWriter, spec: ModelSpec) -> None:
    """The keys of llama.cpp's bert (as its conversion/bert.py writes them: no rope, no head_count_kv) and qconv's
    embedding keys. tokenizer.ggml.token_type_count must equal the rows of token_types.weight: llama.cpp's loader
    creates that tensor with shape {n_embd, token_type_count} and refuses the file otherwise."""
    writer.add_layer_norm_eps(spec.layer_norm_eps)
    writer.add_causal_attention(False)
    embedding = spec.embedding
    if embedding.pooling is not None:
        writer.add_pooling_type(gguf.PoolingType(embedding.pooling))
    writer.add_token_type_count(spec.n_token_types)
    writer.add_bool(EMBEDDING_NORMALIZE, embedding.normalize)
    if embedding.max_seq_length is not None:
        writer.add_uint32(EMBEDDING_MAX_SEQ_LENGTH, embedding.max_seq_length)


def longrope_attention_factor(spec: ModelSpec) -> float:
    """The cos/sin scale of LongRoPE, as transformers computes it: the config's attention_factor, else
    sqrt(1 + ln(factor) / ln(original context)) with factor = max_position_embeddings / original context (llama.cpp's
    converter always uses the latter)."""
    s = spec.rope_scaling
    if s.get("attention_factor") is not None:
        return float(s["attention_factor"])
    original = int(s["original_max_position_embeddings"])
    factor = float(s.get("factor") or spec.context_length / original)
    return math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1.0 else 1.0


def copy_metadata(src: GGUFFile, writer: gguf.GGUFWriter, skip=lambda key: False) -> None:
    """Every key/value of a GGUF read by gguf_read into a writer, with its stored type, except the architecture and
    the alignment (the writer sets both) and the keys `skip` names."""
    for key, value in src.metadata.items():
        if key in (gguf.Keys.General.ARCHITECTURE, "general.alignment") or skip(key):
            continue
        vtype = src.value_types[key]
        if vtype == gguf.GGUFValueType.ARRAY:
            items = value.tolist() if isinstance(value, np.ndarray) else value
            writer.add_key_value(key, items, vtype, sub_type=src.array_types.get(key))
        else:
            writer.add_key_value(key, value, vtype)


def llama3_rope_factors(spec: ModelSpec) -> np.ndarray:
    """Per-frequency divisors for llama3 rope scaling (Meta's published formula), stored as rope_freqs.weight."""
    s = spec.rope_scaling
    factor = float(s.get("factor", 8.0))
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    freqs = 1.0 / (spec.rope_theta ** (np.arange(0, spec.head_dim, 2, dtype=np.float64) / spec.head_dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


class StreamingGGUFWriter:
    """Declare every tensor (name, shape, type, byte size), then `begin()`, then `write()` them in that order.

    Use as a context manager: on an exception the temporary file is removed and the target is left untouched.
    """

    def __init__(self, out_path: Path, arch: str):
        self.out_path = Path(out_path)
        self._output = AtomicFile(self.out_path)
        check_output_file(self.out_path)
        self.writer = gguf.GGUFWriter(None, arch)
        self._declared: list[str] = []
        self._written = 0

    def declare(self, name: str, shape: tuple[int, ...], ggml_type: gguf.GGMLQuantizationType, nbytes: int) -> None:
        """shape in numpy order (rows, row_length); GGUF stores it reversed."""
        # A non-uint8 dtype keeps gguf-py from reading `shape` as a byte shape: we always pass element shapes.
        self.writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=ggml_type)
        self._declared.append(name)

    def begin(self) -> None:
        self.writer.write_header_to_file(path=self._output.open())
        self.writer.write_kv_data_to_file()
        self.writer.write_ti_data_to_file()

    def write(self, data: np.ndarray) -> None:
        self.write_chunks([data])

    def write_chunks(self, chunks) -> None:
        """The next declared tensor's data, given as consecutive pieces (row ranges), so a large tensor never has
        to be held whole. Padding follows gguf-py's write_tensor_data: align before, then pad the size."""
        w = self.writer
        fout = w.fout[0]
        name = next(iter(w.tensors[0]))
        info = w.tensors[0].pop(name)
        w.write_padding(fout, fout.tell())
        written = 0
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk)
            chunk.tofile(fout)
            written += chunk.nbytes
        if written != info.nbytes:
            raise FormatError(f"{self.out_path}: tensor '{name}' has {written} bytes of data, declared {info.nbytes}")
        w.write_padding(fout, written)
        w.state = gguf.gguf_writer.WriterState.WEIGHTS
        self._written += 1

    def finish(self) -> Path:
        if self._written != len(self._declared):
            raise FormatError(f"{self.out_path}: wrote {self._written} of {len(self._declared)} declared tensors")
        self.writer.close()
        return self._output.commit()

    def abort(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - cleanup must not mask the original error (a full disk fails again here)
            pass
        self._output.discard()

    def __enter__(self) -> StreamingGGUFWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.abort()
            full = disk_full_error(self.out_path, exc)
            if full is not None:
                raise full from None
