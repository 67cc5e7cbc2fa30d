"""HF folder -> OUT_DIR: a decoder as ONNX with block-quantized int4/uint4/int8/uint8 weights.

Families: those of formats/architectures.py with a genai_type (llama, mistral, qwen2, qwen3, gemma3, phi3,
smollm3); what differs between them (norm placement and shift, GeGLU, embedding scale, rope tables per layer,
partial rotary, LongRoPE, sliding windows, query scale, soft-capping) is onnx_families.py's DecoderLayout. The
mixtures of experts (qwen3moe, olmoe) are refused by name before anything is read or written.

OUT_DIR holds model.onnx (+ model.onnx.data when the weights pass 2 GB), genai_config.json (so
onnxruntime-genai loads the folder), the HF tokenizer files with the chat template, and tokenizer.gguf: a
tensorless GGUF carrying the same tokenizer metadata as our GGUF files, so qconv's C tokenizer serves ONNX
folders too (ids identical to llama.cpp's, no HF dependency at run time).

The graph (standard ONNX ops, opset 23 by default, 21 with --opset 21 for runtimes without opset 23):
- inputs input_ids [batch, seq], attention_mask [batch, total], position_ids [batch, seq],
  past_key_values.{i}.key/value [batch, kv_heads, past, head_dim]; outputs logits [batch, seq, vocab] and
  present.{i}.key/value [batch, kv_heads, total, head_dim] (optimum / onnxruntime-genai names).
- every linear layer: K x N quantized initializer -> DequantizeLinear(axis 0, block_size) -> MatMul, which ONNX
  Runtime fuses into MatMulNBits. Scales and zero points come from qconv's importance-weighted block search.
- the embedding table and the output head are quantized at --bits (--head-bits overrides) in blocks of 16
  (--head-block-size): the head is the most sensitive matrix of a small model, and its smaller blocks cost 4 bytes
  per 16 of its weights, well inside the size bound (bits/8 x parameters + scales). The table is stored once,
  quantized, in the head's K x N layout ([hidden, vocab]). A lookup takes Transpose(Cast to 8-bit) of it (Gather
  has no 4-bit types; ONNX Runtime folds both once at load into an 8-bit [vocab, hidden] table beside the head's
  fused copy), gathers the token rows and their block scales, and dequantizes only those rows. A tied head reuses
  the same quantized initializer, scales and zero points: the lookup transposes them too (folded at load), so the
  DequantizeLinear of the head keeps its inputs to itself and still fuses into MatMulNBits, and the file holds
  the table once.
- importance weights: from --imatrix, else measured first by ONNX Runtime on the unquantized graph over the
  built-in calibration text or --calibrate DATA (onnx_calibrate.py), the head's input (final norm output)
  included; --no-calibrate weighs every column the same.
- by default every linear layer (q, k, v, o, gate, up, down, head) is its own initializer and MatMulNBits. With
  --fuse-linear (OnnxOptions.fuse_linear), q/k/v of a layer are one K x (Nq + Nk + Nv) weight and gate/up one
  K x 2F weight (one MatMulNBits each, then Split): fewer, wider kernels per token (decoding a small model is
  dominated by per-node cost), the same quantized values (blocks run along K).
- cos/sin of rope (rotate-half, HF's layout) computed once per call from position_ids with the model's theta and
  linear/llama3/yarn/longrope scaling (one table per base: Gemma 3's sliding layers have their own); an additive
  mask [batch, 1, seq, total] from attention_mask (padding) and the causal order of the total sequence, one per
  attention window the layers use (Gemma 3's sliding layers, Phi-3's sliding_window), shared by those layers. The
  KV cache keeps every position of every layer (present = past + new), windowed layers included: the mask limits
  what a query sees.
- a checkpoint's fused linear layers (Phi-3's qkv_proj, gate_up_proj) stay one MatMulNBits each, then Split.
- opset 23 (the default): each layer is RMSNormalization, RotaryEmbedding on q and k, and one Attention node that
  takes the past keys/values and returns present.* (grouped-query heads by q_num_heads/kv_num_heads): about 17
  nodes per layer, since decoding a small model pays per node. Opset 21 spells the same computation in older ops:
  RMSNorm as Pow, ReduceMean, Add, Sqrt, Div, Mul (which ONNX Runtime fuses), rope on q and k together before the
  heads' transpose (rotate_half as one MatMul), attention as MatMul/Softmax over [batch, kv_heads, group * seq,
  head_dim] (no key/value copies per group) after Concat of the cache.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import onnx
from onnx import TensorProto

from qconv.converter.onnx_families import (
    LOCAL_ROPE,
    DecoderLayout,
    decoder_layout,
    graph_activation,
    rope_frequencies,
    rope_inv_freq,  # noqa: F401 - the name tests and benchmarks import from here
)
from qconv.converter.sources import HFSource
from qconv.formats import folder_files
from qconv.formats.architectures import ARCHITECTURES
from qconv.formats.atomic_write import AtomicFolder, check_output_folder
from qconv.formats.errors import FormatError
from qconv.formats.gguf_write import add_model_metadata
from qconv.formats.hf_config import ModelSpec, read_model_spec
from qconv.formats.imatrix import ImportanceMatrix, read_imatrix
from qconv.formats.onnx_graph import GATHERABLE, PROTO_LIMIT_BYTES, QUANT_TYPES, GraphBuilder
from qconv.formats.tensor_names import gguf_name
from qconv.runtime.blockwise import BITS, BLOCK_SIZES, quantize_blockwise

OPSETS = (21, 23)  # 23: RMSNormalization, RotaryEmbedding and Attention (with the KV cache) as single nodes
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
TOKENIZER_GGUF = "tokenizer.gguf"
GENERATION_CONFIG = "generation_config.json"
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
)
# onnxruntime-genai's model type per GGUF architecture (the architecture table's genai_type)
GENAI_TYPES = {a.gguf_arch: a.genai_type for a in ARCHITECTURES.values() if a.genai_type}
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Linear layers of one input, grouped: by default one MatMul(NBits) each; with fuse_linear stored as one
# K x (N1 + N2 ...) weight, one MatMul(NBits) and a Split: blocks run along K, so the concatenation quantizes
# exactly as the parts; one kernel instead of three (two) per layer (k/v alone are too narrow to keep the threads
# busy; decoding a small model pays per node). Group stem -> its parts, in order.
FUSED_LINEAR = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}  # fmt: skip
MASK_MIN = float(np.finfo(np.float32).min)  # HF's masked score: exp() is 0 and a fully masked row stays finite
# The output head is the most sensitive matrix of a small model (SmolLM2-135M: a 4-bit head alone moves the KLD to
# f32 from 0.21 to 0.28); blocks of 16 there cost 4 bytes per 16 weights of one matrix, within the size bound.
HEAD_BLOCK_SIZE = 16
DECODER_BLOCK_SIZE = 32
# A BERT's activations carry outlier channels that ONNX Runtime's int8 input blocks (its default MatMulNBits
# accuracy level) share a scale with: blocks of 16 halve that, and with the smoothing of onnx_encoder.py MiniLM at
# 8 bits keeps every test sentence at cosine >= 0.999 to float32 (blocks of 32: 0.9989)
ENCODER_BLOCK_SIZE = 16
ROPE_MATMUL = "rope_rotate_half_MatMul"  # node name prefix of rope's x @ R (not a weight)
HEAD_IMATRIX = "output.weight"  # llama.cpp's name of the head's importance entry (input: the final norm's output)


@dataclass(frozen=True)
class OnnxOptions:
    bits: int = 4
    block_size: int | None = None  # None: DECODER_BLOCK_SIZE, or ENCODER_BLOCK_SIZE for a BERT encoder (for_family)
    head_bits: int | None = None  # the embedding table and output head; None: `bits` (the size bound counts so)
    head_block_size: int | None = None  # None: HEAD_BLOCK_SIZE, or block_size when that is smaller
    symmetric: bool = False
    imatrix: Path | None = None
    imatrix_label: str | None = None  # how the report and metadata name the imatrix (default: its path)
    # without an imatrix: measure one first (onnx_calibrate) over these files/folders, or the built-in text
    calibrate: bool = True
    calibration_data: tuple[Path, ...] = ()
    threads: int | None = None
    external_data: bool | None = None  # None: only when the weights would pass the 2 GB protobuf limit
    quantize: bool = True  # False: float32 weights (the baseline other quantizers start from; not for shipping)
    # one MatMulNBits per FUSED_LINEAR group (q/k/v, gate/up) instead of one per linear layer: faster decoding
    fuse_linear: bool = False
    opset: int = 23

    @property
    def fused_ops(self) -> bool:
        """Norms, rope and attention as the single nodes opset 23 defines."""
        return self.opset >= 23

    def __post_init__(self) -> None:
        if self.imatrix is not None and self.imatrix_label is None:
            object.__setattr__(self, "imatrix_label", str(self.imatrix))

    def check(self) -> None:
        if self.opset not in OPSETS:
            raise FormatError(f"unsupported --opset {self.opset}; valid: {', '.join(map(str, OPSETS))}")
        if self.bits not in BITS:
            raise FormatError(f"unsupported --bits {self.bits}; valid: {', '.join(map(str, BITS))}")
        if self.head_bits is not None and self.head_bits not in BITS:
            raise FormatError(f"unsupported --head-bits {self.head_bits}; valid: {', '.join(map(str, BITS))}")
        for flag, size in (("--block-size", self.block_size), ("--head-block-size", self.head_block_size)):
            if size is not None and size not in BLOCK_SIZES:
                raise FormatError(f"unsupported {flag} {size}; valid: {', '.join(map(str, BLOCK_SIZES))}")

    def for_family(self, encoder: bool) -> OnnxOptions:
        """These options with the family's default block size when none was given."""
        if self.block_size is not None:
            return self
        return dataclasses.replace(self, block_size=ENCODER_BLOCK_SIZE if encoder else DECODER_BLOCK_SIZE)

    @property
    def head_quant_bits(self) -> int:
        return self.bits if self.head_bits is None else self.head_bits

    @property
    def head_block(self) -> int:
        if self.head_block_size is not None:
            return self.head_block_size
        return min(HEAD_BLOCK_SIZE, self.block_size or DECODER_BLOCK_SIZE)

    @property
    def onnx_type(self) -> int:
        return QUANT_TYPES[(self.bits, self.symmetric)]

    @property
    def head_type(self) -> int:
        return QUANT_TYPES[(self.head_quant_bits, self.symmetric)]


@dataclass
class ExportResult:
    out_dir: Path
    model_bytes: int
    data_bytes: int
    n_quantized: int  # linear layers stored as QDQ blocks (head included)
    parameters: int
    seconds: float
    files: list[str] = field(default_factory=list)
    imatrix: str | None = None  # where the importance weights came from
    options: OnnxOptions | None = None  # as the export ran them (the family's default block size filled in)


# ---------------------------------------------------------------- the graph


class DecoderGraph:
    """Builds the decoder into a GraphBuilder, one tensor read and quantized at a time. Graph tensors and
    initializers are named after the HF tensors as the architecture rows spell them (model.layers.0.self_attn...);
    what differs between families comes from onnx_families.decoder_layout."""

    def __init__(
        self,
        source: HFSource,
        options: OnnxOptions,
        imatrix: ImportanceMatrix | None,
        g: GraphBuilder,
        progress: Callable[[str, int, int], None] | None = None,
    ):
        self.source, self.spec, self.options, self.imatrix, self.g = source, source.spec, options, imatrix, g
        embedding = source.safetensors.entries[source.hf_names["token_embd.weight"]]
        self.layout: DecoderLayout = decoder_layout(self.spec, embedding.dtype)
        self.present = set(self.spec.expected_shapes())  # the HF tensors this config has (biases, norms)
        self.progress = progress or (lambda name, done, total: None)
        self.n_quantized = 0
        self.parameters = 0
        self.linear_inputs: dict[str, str] = {}  # GGUF weight name -> the graph tensor multiplied by it
        self._reads = 0

    # -- helpers

    def gguf(self, hf_name: str) -> str:
        return gguf_name(hf_name, self.spec.arch)

    def read(self, hf_name: str) -> np.ndarray:
        """An HF tensor by its name as the rows spell it (a multimodal checkpoint stores it under a prefix)."""
        self._reads += 1
        self.progress(hf_name, self._reads, len(self.source.hf_names))
        values = self.source.safetensors.read_f32(self.source.hf_names[self.gguf(hf_name)])
        self.parameters += values.size
        return values

    def importance(self, hf_name: str) -> np.ndarray | None:
        if self.imatrix is None:
            return None
        found = self.imatrix.mean_squares(self.gguf(hf_name))
        if found is None and hf_name == "model.embed_tokens.weight" and self.spec.tied_embeddings:
            found = self.imatrix.mean_squares(HEAD_IMATRIX)  # the tied head's activations, under either name
        return found

    def quantize_rows(self, hf_name: str, values: np.ndarray, head: bool = False, importance=None):
        o = self.options
        imp = self.importance(hf_name) if importance is None else importance
        bits, block = (o.head_quant_bits, o.head_block) if head else (o.bits, o.block_size)
        try:
            return quantize_blockwise(values, bits, block, o.symmetric, imp, o.threads)
        except ValueError as e:
            where = self.source.safetensors.entries[self.source.hf_names[self.gguf(hf_name)]].file
            raise FormatError(f"{where}: tensor '{hf_name}': {e}") from None

    def linear(
        self, x: str, hf_weight: str, hf_bias: str | None = None, out: str | None = None, head: bool = False
    ) -> str:
        """x @ W^T (+ b) with W [out, in] quantized along `in` and stored K x N."""
        o = self.options
        stem = hf_weight.removesuffix(".weight")
        self.linear_inputs[self.gguf(hf_weight)] = x
        if not o.quantize:
            w = self.g.constant(hf_weight, np.ascontiguousarray(self.read(hf_weight).T))
            return self.bias_add(
                self.g.node("MatMul", [x, w], [out] if out and not hf_bias else 1, name=f"{stem}_MatMul"), hf_bias, out
            )
        quant = self.quantize_rows(hf_weight, self.read(hf_weight), head=head)
        zp = None if quant.zero_points is None else quant.zero_points.T
        qtype = o.head_type if head else o.onnx_type
        w = self.g.dequantized_weight(
            stem, quant.q.T, np.ascontiguousarray(quant.scales.T), zp, qtype, quant.block_size
        )
        self.n_quantized += 1
        return self.bias_add(
            self.g.node("MatMul", [x, w], [out] if out and not hf_bias else 1, name=f"{stem}_MatMul"), hf_bias, out
        )

    def linear_group(self, x: str, stem: str, split: bool = True) -> list[str] | str:
        """x @ W^T (+ b) for each part of FUSED_LINEAR[stem] of one layer: the parts' outputs, or (split=False)
        their concatenation. One MatMul per part (the default, and the float export other quantizers start from),
        or with fuse_linear one MatMul of the concatenated K x (N1 + N2 ...) weight, split back into the parts. A
        checkpoint that stores the group as one tensor (Phi-3's qkv_proj, gate_up_proj) is one linear layer: one
        MatMul either way."""
        o, g = self.options, self.g
        prefix, fused = stem.rsplit(".", 2)[0], ".".join(stem.rsplit(".", 2)[1:])
        if self.layout.stored_fused(fused):
            y = self.linear(x, stem + ".weight")
            sizes = self.layout.part_sizes(fused)
            return g.node("Split", [y, self.g.const(sizes)], len(sizes), axis=-1) if split else y
        parts = [f"{prefix}.{part}.weight" for part in FUSED_LINEAR[fused]]
        hf_biases = [b if b in self.present else None for b in (w.replace(".weight", ".bias") for w in parts)]
        if not (o.quantize and o.fuse_linear):
            outputs = [self.linear(x, w, b) for w, b in zip(parts, hf_biases)]
            return outputs if split else g.node("Concat", outputs, axis=-1)
        quants = []
        for hf_weight in parts:
            self.linear_inputs[self.gguf(hf_weight)] = x
            quants.append(self.quantize_rows(hf_weight, self.read(hf_weight)))
        sizes = [q.q.shape[0] for q in quants]
        kn = np.concatenate([q.q.T for q in quants], axis=1)
        scales = np.concatenate([q.scales.T for q in quants], axis=1)
        zp = None if quants[0].zero_points is None else np.concatenate([q.zero_points.T for q in quants], axis=1)
        w = g.dequantized_weight(stem, kn, scales, zp, o.onnx_type, o.block_size)
        self.n_quantized += len(parts)
        y = g.node("MatMul", [x, w], 1, name=f"{stem}_MatMul")
        if any(hf_biases):
            biases = [self.read(b) if b else np.zeros(n, np.float32) for b, n in zip(hf_biases, sizes)]
            y = g.node("Add", [y, g.constant(f"{stem}.bias", np.concatenate(biases))])
        return g.node("Split", [y, self.g.const(sizes)], len(sizes), axis=-1) if split else y

    def bias_add(self, y: str, hf_bias: str | None, out: str | None) -> str:
        if not hf_bias:
            return y
        return self.g.node("Add", [y, self.g.constant(hf_bias, self.read(hf_bias))], [out] if out else 1)

    def rms_norm(self, x: str, role: str, bid: int | None = None) -> str:
        """The family's norm of GGUF role `role` (layer `bid`); its gain shifted where the row says (Gemma's
        x * (1 + w), computed in float32 as transformers does)."""
        g = self.g
        hf_weight, shift = self.layout.norm(role, bid)
        gain = self.read(hf_weight)
        gamma = g.constant(hf_weight, gain + np.float32(shift) if shift else gain)
        if self.options.fused_ops:
            return g.node("RMSNormalization", [x, gamma], axis=-1, epsilon=self.spec.rms_eps)
        square = g.node("Pow", [x, self.g.const(2.0, np.float32)])
        mean = g.node("ReduceMean", [square, self.g.const([-1])], keepdims=1)
        rms = g.node("Sqrt", [g.node("Add", [mean, self.g.const(self.spec.rms_eps, np.float32)])])
        return g.node("Mul", [g.node("Div", [x, rms]), gamma])

    # -- parts

    def embedding(self, input_ids: str) -> str:
        """Quantized table [hidden, vocab] (shared with a tied head) -> lookup of the tokens' rows only (times
        Gemma's sqrt(hidden))."""
        rows = self.embedding_lookup(input_ids)
        if self.layout.embedding_scale is None:
            return rows
        return self.g.node("Mul", [rows, self.g.const(self.layout.embedding_scale, np.float32)])

    def embedding_lookup(self, input_ids: str) -> str:
        g, o = self.g, self.options
        name = "model.embed_tokens.weight"
        if not o.quantize:
            self.embed_values = self.read(name)
            return g.node("Gather", [g.constant(name, self.embed_values), input_ids], axis=0)
        tied = self.spec.tied_embeddings
        quant = self.quantize_rows(name, self.read(name), head=True)
        table = g.quantized("embed_tokens_q", quant.q.T, o.head_type)
        gather_type = GATHERABLE[o.head_type]

        def lookup_layout(kn: str) -> str:
            """[vocab, x] in a gatherable type from a [x, vocab] initializer. ONNX Runtime folds these once at
            load into initializers of their own, so the head's DequantizeLinear keeps its inputs to itself and
            still fuses into MatMulNBits: the file holds the table, scales and zero points once."""
            cast = kn if g.elem_type(kn) in (gather_type, TensorProto.FLOAT) else g.node("Cast", [kn], to=gather_type)
            return g.node("Transpose", [cast], perm=[1, 0])

        rows = g.node("Gather", [lookup_layout(table), input_ids], axis=0)  # [batch, seq, hidden]
        if tied:  # stored in the head's layout [blocks, vocab]
            scales = lookup_layout(g.constant("lm_head_scale", np.ascontiguousarray(quant.scales.T)))
            zero_points = None
            if quant.zero_points is not None:
                zero_points = lookup_layout(g.quantized("lm_head_zp", quant.zero_points.T, o.head_type))
        else:
            scales = g.constant("embed_tokens_lookup_scale", quant.scales)
            zero_points = None
            if quant.zero_points is not None:
                zero_points = g.quantized("embed_tokens_lookup_zp", quant.zero_points, gather_type)
        dq_inputs = [rows, g.node("Gather", [scales, input_ids], axis=0)]
        if zero_points is not None:
            dq_inputs.append(g.node("Gather", [zero_points, input_ids], axis=0))
        self.embed_quant, self.embed_table = quant, table
        return g.node("DequantizeLinear", dq_inputs, axis=2, block_size=quant.block_size)

    def head(self, x: str) -> str:
        """The logits; Gemma's final soft-capping, when the config sets it, as cap * tanh(logits / cap)."""
        g, cap = self.g, self.layout.logit_softcap
        out = g.fresh("logits_uncapped") if cap else "logits"
        logits = self.head_matmul(x, out)
        if not cap:
            return logits
        capped = g.node("Tanh", [g.node("Div", [logits, self.g.const(cap, np.float32)])])
        return g.node("Mul", [capped, self.g.const(cap, np.float32)], ["logits"])

    def head_matmul(self, x: str, out: str) -> str:
        g, o, spec = self.g, self.options, self.spec
        if not spec.tied_embeddings:
            return self.linear(x, "lm_head.weight", out=out, head=True)
        self.linear_inputs[HEAD_IMATRIX] = x
        if not o.quantize:  # a K x N copy, so that weight-only quantizers see the head as a MatMul weight
            w = g.constant("lm_head.weight", np.ascontiguousarray(self.embed_values.T))
            return g.node("MatMul", [x, w], [out], name="lm_head_MatMul")
        quant = self.embed_quant
        inputs = [self.embed_table, "lm_head_scale"] + (["lm_head_zp"] if quant.zero_points is not None else [])
        w = g.node(
            "DequantizeLinear", inputs, ["lm_head_dq"], name="lm_head_DequantizeLinear", axis=0,
            block_size=quant.block_size,
        )  # fmt: skip
        self.n_quantized += 1
        return g.node("MatMul", [x, w], [out], name="lm_head_MatMul")

    def rope_tables(self, position_ids: str) -> dict[str, tuple[str, str]]:
        """cos, sin of the tokens' positions per rope table the layers use (onnx_families: global, Gemma 3's
        local): [batch, seq, rotary_dim / 2] as RotaryEmbedding takes them (opset 23), or [batch, seq, 1, head_dim]
        for the rotate-half spelled out before the heads' transpose (opset 21; dimensions past rotary_dim get
        cos 1 and sin 0, so they pass through). LongRoPE picks its long or short frequencies per call with a Where
        on max(position_ids) + 1 (see onnx_families)."""
        g, spec = self.g, self.spec
        positions = g.node("Unsqueeze", [g.node("Cast", [position_ids], to=TensorProto.FLOAT), self.g.const([2])])
        tables = {}
        for kind in self.layout.rope_kinds:
            rope = rope_frequencies(spec, kind)
            suffix = "_local" if kind == LOCAL_ROPE else ""
            inv_freq = g.constant(f"rope_inv_freq{suffix}", rope.inv_freq)
            if rope.long_inv_freq is not None:
                length = g.node("Add", [g.node("ReduceMax", [position_ids], keepdims=0), self.g.const(1)])
                long = g.node("Greater", [length, self.g.const(rope.long_after)])
                long_inv_freq = g.constant(f"rope_inv_freq_long{suffix}", rope.long_inv_freq)
                inv_freq = g.node("Where", [long, long_inv_freq, inv_freq])
            freqs = g.node("Mul", [positions, inv_freq])  # [batch, seq, rotary_dim/2]
            angles = freqs if self.options.fused_ops else g.node("Concat", [freqs, freqs], axis=-1)
            cos, sin = g.node("Cos", [angles]), g.node("Sin", [angles])
            if rope.factor != 1.0:
                cos = g.node("Mul", [cos, self.g.const(rope.factor, np.float32)])
                sin = g.node("Mul", [sin, self.g.const(rope.factor, np.float32)])
            if not self.options.fused_ops:
                passed = spec.head_dim - spec.rotary_dim
                if passed:
                    pads = self.g.const([0, 0, 0, 0, 0, passed])
                    cos = g.node("Pad", [cos, pads, self.g.const(1.0, np.float32)])
                    sin = g.node("Pad", [sin, pads, self.g.const(0.0, np.float32)])
                cos, sin = (g.node("Unsqueeze", [t, self.g.const([2])]) for t in (cos, sin))
            tables[kind] = (cos, sin)
        return tables

    def attention_biases(self, input_ids: str, attention_mask: str) -> dict[int | None, str]:
        """Additive masks per attention window the layers use: 0 where a query may see a key (causal over the
        total sequence, not padding, and within the window: query - key < window), the float minimum elsewhere
        (finite, so a fully masked padding row stays finite). [batch, 1, seq, total] for the Attention node,
        which broadcasts it over the heads; [batch, 1, group * seq, total] for the spelled-out attention's rows."""
        g = self.g
        total = g.node("Squeeze", [g.node("Shape", [attention_mask], start=1, end=2), self.g.const([0])])
        seq = g.node("Squeeze", [g.node("Shape", [input_ids], start=1, end=2), self.g.const([0])])
        past = g.node("Sub", [total, seq])
        query_pos = g.node("Unsqueeze", [g.node("Range", [past, total, self.g.const(1)]), self.g.const([1])])
        key_pos = g.node("Unsqueeze", [g.node("Range", [self.g.const(0), total, self.g.const(1)]), self.g.const([0])])
        causal = g.node("LessOrEqual", [key_pos, query_pos])  # [seq, total]
        keep = g.node("Unsqueeze", [g.node("Cast", [attention_mask], to=TensorProto.BOOL), self.g.const([1, 2])])
        allowed = g.node("And", [causal, keep])  # [batch, 1, seq, total]
        biases = {}
        for window in self.layout.windows:
            visible = allowed
            if window is not None:
                near = g.node("Less", [g.node("Sub", [query_pos, key_pos]), self.g.const(window)])
                visible = g.node("And", [allowed, near])
            bias = g.node("Where", [visible, self.g.const(0.0, np.float32), self.g.const(MASK_MIN, np.float32)])
            if not self.options.fused_ops:  # the query rows of one kv head are (group member, position)
                bias = g.node("Tile", [bias, self.g.const([1, 1, self.spec.n_heads // self.spec.n_kv_heads, 1])])
            biases[window] = bias
        return biases

    def rotate(self, x: str, cos: str, sin: str) -> str:
        """HF's rotate-half rope of x [batch, seq, heads, head_dim] over its first rotary_dim dimensions:
        x cos + rotate_half(x) sin, where rotate_half(x) = [-x2, x1] is x @ R for a signed permutation R (one
        MatMul, exact: one +-1 per column, instead of Split, Neg and Concat; zero past rotary_dim, where cos is 1
        and sin 0)."""
        d, half = self.spec.head_dim, self.spec.rotary_dim // 2
        rotation = np.zeros((d, d), dtype=np.float32)
        rotation[np.arange(half) + half, np.arange(half)] = -1.0
        rotation[np.arange(half), np.arange(half) + half] = 1.0
        g = self.g
        # named, so that weight-only quantizers run on a float32 export can leave this constant alone
        rotated = g.node("MatMul", [x, self.g.const(rotation, np.float32)], name=g.fresh(ROPE_MATMUL))
        return g.node("Add", [g.node("Mul", [x, cos]), g.node("Mul", [rotated, sin])])

    def attention(self, i: int, x: str, rope: tuple[str, str] | None, bias: str) -> str:
        p = f"model.layers.{i}.self_attn."
        if self.options.fused_ops:
            out = self.attention_node(i, self.linear_group(x, p + "qkv_proj"), rope, bias)
        else:
            out = self.attention_spelled_out(i, self.linear_group(x, p + "qkv_proj", False), rope, bias)
        o_bias = p + "o_proj.bias"
        return self.linear(out, p + "o_proj.weight", o_bias if o_bias in self.present else None)

    def attention_node(self, i: int, qkv: list[str], rope: tuple[str, str] | None, bias: str) -> str:
        """Opset 23: q/k norms (Qwen3, Gemma 3), RotaryEmbedding on q and k [batch, seq, heads * head_dim], and one
        Attention node over the cache (past_key_values.i in, present.i out), its heads grouped by
        q/kv_num_heads."""
        g, spec = self.g, self.spec
        q, k, v = qkv
        rotated = []
        for x, norm, n_heads in ((q, "attn_q_norm", spec.n_heads), (k, "attn_k_norm", spec.n_kv_heads)):
            if spec.arch.qk_norm:  # a norm per head, q's and k's own, before rope
                heads = g.node("Reshape", [x, self.g.const([0, 0, n_heads, spec.head_dim])])
                x = g.node("Reshape", [self.rms_norm(heads, norm, i), self.g.const([0, 0, -1])])
            if rope is not None:
                partial = {"rotary_embedding_dim": spec.rotary_dim} if spec.rotary_dim != spec.head_dim else {}
                x = g.node("RotaryEmbedding", [x, *rope], num_heads=n_heads, interleaved=0, **partial)
            rotated.append(x)
        inputs = [*rotated, v, bias, f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        outputs = [g.fresh("attention"), f"present.{i}.key", f"present.{i}.value"]
        g.node(
            "Attention", inputs, outputs, q_num_heads=spec.n_heads, kv_num_heads=spec.n_kv_heads,
            scale=self.layout.attention_scale,
        )  # fmt: skip
        return outputs[0]

    def attention_spelled_out(self, i: int, qkv: str, rope: tuple[str, str] | None, bias: str) -> str:
        """Opset 21: rope, grouped-query attention and the cache in MatMul/Softmax/Concat."""
        g, spec = self.g, self.spec
        n_q, n_kv = spec.n_heads, spec.n_kv_heads
        heads = g.node("Reshape", [qkv, self.g.const([0, 0, n_q + 2 * n_kv, spec.head_dim])])  # [b, s, heads, d]
        if spec.arch.qk_norm:  # a norm per head, q's and k's own, before rope
            q, k, v = g.node("Split", [heads, self.g.const([n_q, n_kv, n_kv])], 3, axis=2)
            q, k = self.rms_norm(q, "attn_q_norm", i), self.rms_norm(k, "attn_k_norm", i)
            if rope is not None:
                q, k = self.rotate(q, *rope), self.rotate(k, *rope)
        else:  # q and k heads rotated together
            qk, v = g.node("Split", [heads, self.g.const([n_q + n_kv, n_kv])], 2, axis=2)
            if rope is not None:
                qk = self.rotate(qk, *rope)
            q, k = g.node("Split", [qk, self.g.const([n_q, n_kv])], 2, axis=2)
        to_heads = [0, 2, 1, 3]  # [b, s, h, d] -> [b, h, s, d]
        q = g.node(
            "Mul", [g.node("Transpose", [q], perm=to_heads), self.g.const(self.layout.attention_scale, np.float32)]
        )
        k = g.node("Transpose", [k], perm=to_heads)
        v = g.node("Transpose", [v], perm=to_heads)
        key = g.node("Concat", [f"past_key_values.{i}.key", k], [f"present.{i}.key"], axis=2)
        value = g.node("Concat", [f"past_key_values.{i}.value", v], [f"present.{i}.value"], axis=2)
        # query heads h = kv * group + j share kv head kv: fold the group into the query rows
        q_rows = g.node("Reshape", [q, self.g.const([0, spec.n_kv_heads, -1, spec.head_dim])])
        scores = g.node("MatMul", [q_rows, g.node("Transpose", [key], perm=[0, 1, 3, 2])])  # [b, kv, g*s, t]
        probs = g.node("Softmax", [g.node("Add", [scores, bias])], axis=-1)
        out = g.node("MatMul", [probs, value])  # [b, kv, g*s, head_dim]
        out = g.node("Reshape", [out, self.g.const([0, spec.n_heads, -1, spec.head_dim])])
        out = g.node("Transpose", [out], perm=[0, 2, 1, 3])
        return g.node("Reshape", [out, self.g.const([0, 0, spec.n_heads * spec.head_dim])])

    def mlp(self, i: int, x: str) -> str:
        """SwiGLU (silu(gate) * up), or Gemma's GeGLU with tanh-GELU."""
        g, p = self.g, f"model.layers.{i}.mlp."
        gate, up = self.linear_group(x, p + "gate_up_proj")
        if self.layout.activation == "gelu_tanh":
            act = g.node("Gelu", [gate], approximate="tanh")
        else:
            act = g.node("Mul", [gate, g.node("Sigmoid", [gate])])
        return self.linear(g.node("Mul", [act, up]), p + "down_proj.weight")

    def build(self) -> None:
        g, spec, layout = self.g, self.spec, self.layout
        input_ids = g.add_input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
        attention_mask = g.add_input("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])
        position_ids = g.add_input("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
        cache_shape = ["batch_size", spec.n_kv_heads, "past_sequence_length", spec.head_dim]
        present_shape = ["batch_size", spec.n_kv_heads, "total_sequence_length", spec.head_dim]
        g.add_output("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", spec.vocab_size])
        for i in range(spec.n_layers):
            for kind in ("key", "value"):
                g.add_input(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, cache_shape)
                g.add_output(f"present.{i}.{kind}", TensorProto.FLOAT, present_shape)
        x = self.embedding(input_ids)
        ropes = self.rope_tables(position_ids)
        biases = self.attention_biases(input_ids, attention_mask)
        post_norms = layout.norm("post_attention_norm", 0) is not None  # Gemma 3: attention and FFN outputs normed
        for i, plan in enumerate(layout.layers):
            rope = ropes[plan.rope] if plan.rope else None
            h = self.attention(i, self.rms_norm(x, "attn_norm", i), rope, biases[plan.window])
            x = g.node("Add", [x, self.rms_norm(h, "post_attention_norm", i) if post_norms else h])
            h = self.mlp(i, self.rms_norm(x, "ffn_norm", i))
            x = g.node("Add", [x, self.rms_norm(h, "post_ffw_norm", i) if post_norms else h])
        self.head(self.rms_norm(x, "output_norm"))


# ---------------------------------------------------------------- the folder


def model_metadata(options: OnnxOptions, source_name: str) -> dict[str, str]:
    """The export options written into model.onnx's metadata (decoders and encoders)."""
    return {
        "qconv.bits": str(options.bits),
        "qconv.head_bits": str(options.head_quant_bits),
        "qconv.head_block_size": str(options.head_block),
        "qconv.block_size": str(options.block_size),
        "qconv.symmetric": str(int(options.symmetric)),
        "qconv.fuse_linear": str(int(options.fuse_linear)),
        "qconv.opset": str(options.opset),
        "qconv.imatrix": options.imatrix_label or "",
        "qconv.source": source_name,
    }


def estimated_bytes(spec: ModelSpec, options: OnnxOptions) -> int:
    params = sum(math.prod(shape) for shape in spec.expected_shapes().values())
    bits = max(options.bits, options.head_quant_bits)
    per_block = 4 + (0 if options.symmetric else bits / 8)
    block = min(options.block_size, options.head_block)
    return int(params * bits / 8 + params / block * per_block)  # an upper bound


def write_tokenizer_gguf(source: HFSource, path: Path) -> None:
    """Architecture and tokenizer metadata only, no tensors: what runtime.tokenizer.Tokenizer.from_gguf reads."""
    writer = gguf.GGUFWriter(str(path), source.spec.gguf_arch)
    add_model_metadata(writer, source.spec)
    source.tokenizer.add_to(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()


def genai_config(spec: ModelSpec, source_dir: Path) -> dict:
    generation = {}
    if folder_files.entry_exists(source_dir, GENERATION_CONFIG):
        generation = folder_files.read_json_object(source_dir, GENERATION_CONFIG)
    eos = generation.get("eos_token_id", spec.eos_token_id)
    pad = generation.get("pad_token_id")
    eos_first = eos[0] if isinstance(eos, list) else eos
    return {
        "model": {
            "bos_token_id": spec.bos_token_id if spec.bos_token_id is not None else eos_first,
            "context_length": spec.context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL_FILE,
                "head_size": spec.head_dim,
                "hidden_size": spec.hidden,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": spec.n_heads,
                "num_hidden_layers": spec.n_layers,
                "num_key_value_heads": spec.n_kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else eos_first,
            "type": GENAI_TYPES[spec.gguf_arch],
            "vocab_size": spec.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": spec.context_length,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,  # present = Concat(past, new): the cache grows, no shared buffer
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def check_exportable(spec: ModelSpec, model_dir: Path) -> None:
    """A family without an ONNX graph (the mixtures of experts) is refused by name, before anything is read or
    written; so is an FFN activation the graph cannot spell."""
    if spec.arch.genai_type is None:
        kind = " (mixture of experts)" if spec.arch.moe else ""
        supported = ", ".join(sorted({a.hf_class for a in ARCHITECTURES.values() if a.genai_type or a.encoder}))
        raise FormatError(
            f"{model_dir}: architecture {spec.architecture}{kind} has no ONNX export; supported: {supported}"
        )
    graph_activation(spec)


def _check_source(source: HFSource) -> None:
    for name in COPIED_FILES:  # a file refused at copy time would waste the whole export: checked first
        if folder_files.entry_exists(source.path, name):
            folder_files.checked_bytes(source.path, name)


def export_onnx(
    model_dir: Path, out_dir: Path, options: OnnxOptions, progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] | None = None, force: bool = False,
) -> ExportResult:  # fmt: skip
    """Write OUT_DIR; on any error nothing is left behind (the folder is built beside it, then swapped in). OUT_DIR
    may be absent, empty or an earlier qconv output; another non-empty folder is refused unless `force`."""
    start = time.perf_counter()
    options.check()
    spec = read_model_spec(Path(model_dir))
    options = options.for_family(spec.arch.encoder)
    if spec.arch.encoder:  # BERT: sentence-transformers' ONNX folder (onnx_encoder.py)
        from qconv.converter.onnx_encoder import export_encoder

        return export_encoder(model_dir, out_dir, options, progress, log, force)
    check_exportable(spec, Path(model_dir))
    out_dir = check_output_folder(Path(out_dir), force)
    source = HFSource(Path(model_dir))  # bad checkpoints fail here
    try:
        _check_source(source)
        imatrix = None
        if options.imatrix is not None:
            imatrix = read_imatrix(Path(options.imatrix))
            imatrix.check_against({g: s[-1] for g, s in source.shapes.items() if len(s) == 2})
        if options.quantize and options.calibrate and (imatrix is None or HEAD_IMATRIX not in imatrix.sums):
            from qconv.converter.onnx_calibrate import probe_importance

            paths = [Path(p) for p in options.calibration_data if str(p) != "builtin"]
            probe = probe_importance(source, paths or None, threads=options.threads, log=log, opset=options.opset)
            label = f"calibrated on {','.join(map(str, paths)) or 'the built-in calibration text'}"
            if imatrix is None:
                imatrix = probe
            else:  # llama-imatrix (and `qconv calibrate`) leave the head out: measure it, keep the rest
                imatrix.sums[HEAD_IMATRIX] = probe.sums[HEAD_IMATRIX]
                imatrix.counts[HEAD_IMATRIX] = probe.counts[HEAD_IMATRIX]
                label = f"{options.imatrix_label} (head {label})"
            options = dataclasses.replace(options, imatrix_label=label)
        external = options.external_data
        if external is None:
            external = estimated_bytes(source.spec, options) > PROTO_LIMIT_BYTES
        with AtomicFolder(out_dir, force) as tmp:
            result = _write_folder(source, tmp, options, imatrix, external, progress)
    finally:
        source.close()
    result.out_dir = out_dir
    result.seconds = time.perf_counter() - start
    result.imatrix, result.options = options.imatrix_label, options
    return result


def _write_folder(
    source: HFSource, folder: Path, options: OnnxOptions, imatrix: ImportanceMatrix | None, external: bool, progress
) -> ExportResult:
    g = GraphBuilder(folder / DATA_FILE if external else None)
    try:
        decoder = DecoderGraph(source, options, imatrix, g, progress)
        decoder.build()
    finally:
        g.close()
    spec = source.spec
    metadata = model_metadata(options, spec.name)
    model = g.model(f"{spec.gguf_arch}_decoder", options.opset, "qconv", metadata)
    onnx.save_model(model, str(folder / MODEL_FILE))
    for name in COPIED_FILES:
        if folder_files.entry_exists(source.path, name):  # through the folder's checks: inside it, bounded, parsed
            folder_files.copy_file(source.path, name, folder / name)
    write_tokenizer_gguf(source, folder / TOKENIZER_GGUF)
    (folder / "genai_config.json").write_text(json.dumps(genai_config(spec, source.path), indent=4) + "\n")
    model_bytes = (folder / MODEL_FILE).stat().st_size
    data_bytes = (folder / DATA_FILE).stat().st_size if external else 0
    return ExportResult(
        folder,
        model_bytes,
        data_bytes,
        decoder.n_quantized,
        decoder.parameters,
        0.0,
        sorted(p.name for p in folder.iterdir()),
    )
