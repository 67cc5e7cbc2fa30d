"""HF BERT folder -> OUT_DIR: a sentence encoder as ONNX with block-quantized weights, in sentence-transformers'
ONNX folder layout (`SentenceTransformer(OUT_DIR, backend="onnx")` loads it; so does runtime.onnx_backend.OnnxModel).

OUT_DIR holds onnx/model.onnx (+ onnx/model.onnx.data past the 2 GB protobuf limit), the source's config.json,
tokenizer files and sentence-transformers module configs (modules.json, 1_Pooling/config.json,
sentence_bert_config.json, config_sentence_transformers.json), and tokenizer.gguf: the tokenizer metadata our GGUF
files carry, so qconv's C tokenizer serves the folder with no HF dependency at run time.

The graph (standard ONNX ops, opset 23 by default, 21 with --opset 21):
- inputs input_ids, attention_mask, token_type_ids [batch, seq] (int64, what a BERT tokenizer returns and what
  optimum's ORTModelForFeatureExtraction feeds); output last_hidden_state [batch, seq, hidden]. Pooling and
  normalisation stay in the module configs, as sentence-transformers' own ONNX exports leave them.
- embeddings: word + position (0..seq-1 in every row: padding is on the right) + token type, then LayerNorm.
  The word table (about half of a small encoder's weights) is quantized like the decoder's embedding table:
  --head-bits (default --bits) in blocks of --head-block-size along hidden, stored [vocab, hidden] in the narrow
  type; a lookup Casts it to 8 bits (Gather has no 4-bit types; ONNX Runtime folds the Cast once at load),
  gathers the tokens' rows, block scales and zero points, and dequantizes only those rows. Position and
  token-type tables are small and stay float32.
- per layer (post-norm BERT): q, k, v (with biases), attention over the sequence with an additive padding mask
  (the float minimum on padded keys, as transformers' BERT), output dense, residual + LayerNorm; FFN up, GELU
  (the erf form: ONNX's Gelu), down, residual + LayerNorm. Every linear layer is K x N quantized -> DequantizeLinear
  (axis 0, block_size) -> MatMul, which ONNX Runtime fuses into one MatMulNBits each (6 per layer).
- opset 23 writes attention as one Attention node; 21 spells it as MatMul/Softmax.
- importance weights: --imatrix (llama.cpp names of our bert GGUF), or measured by ONNX Runtime on the float
  graph over the calibration text (cut into sequences of CALIBRATION_LEN tokens, [CLS] ... [SEP]); --no-calibrate:
  every column weighs the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from qconv.converter.onnx_export import DATA_FILE
from qconv.formats import folder_files
from qconv.formats.errors import FormatError
from qconv.formats.imatrix import ImportanceMatrix
from qconv.formats.onnx_graph import GATHERABLE, PROTO_LIMIT_BYTES, GraphBuilder
from qconv.formats.printable import shown
from qconv.formats.sentence_transformers import MODULES_FILE
from qconv.runtime.blockwise import quantize_blockwise
from qconv.runtime.onnx_backend import ENCODER_MODEL, MODEL_FILE, TOKENIZER_GGUF
from qconv.runtime.onnx_backend import ENCODER_OUTPUT as OUTPUT

ENCODER_DIR = str(Path(ENCODER_MODEL).parent)  # sentence-transformers looks for onnx/model.onnx
# files copied as they are (when the source has them): what sentence-transformers and transformers' tokenizer
# read from an ONNX folder; the module configs are checked first (encoder_modules)
COPIED_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
MASK_MIN = float(np.finfo(np.float32).min)  # transformers' BERT: a masked key's additive score
SMOOTH_ALPHA = (
    0.8  # of an input channel's size moved into the weights (SmoothQuant's alpha): MiniLM 8-bit best at 0.8-1
)
# sentence-transformers modules an ONNX folder carries over (the last part of a module's type); others (Dense, ...)
# have weights of their own and are refused
MODULE_KINDS = ("Transformer", "Pooling", "Normalize")
DEFAULT_POOLING_DIR = "1_Pooling"
CALIBRATION_LEN = 128  # tokens per calibration sequence, [CLS] and [SEP] included
CALIBRATION_SEQUENCES = 32

# The graph reads tensors by their GGUF names (llama.cpp's bert architecture), per layer `blk.{i}.`.
LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class EncoderShape:
    hidden: int
    n_heads: int
    n_layers: int
    ffn: int
    vocab_size: int
    n_positions: int
    n_token_types: int
    eps: float
    hidden_act: str

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads


class EncoderGraph:
    """Builds the encoder into a GraphBuilder, one tensor read and quantized at a time. `read(gguf_name)` gives
    a tensor's float32 values; initializers are named after the GGUF tensors."""

    def __init__(
        self,
        shape: EncoderShape,
        read: Callable[[str], np.ndarray],
        options,
        imatrix: ImportanceMatrix | None,
        g: GraphBuilder,
        progress: Callable[[str, int, int], None] | None = None,
        where: str = "",
    ):
        self.shape, self._read, self.options, self.imatrix, self.g = shape, read, options, imatrix, g
        self.progress = progress or (lambda name, done, total: None)
        self.where = where
        self.n_quantized = 0
        self.parameters = 0
        self.linear_inputs: dict[str, str] = {}  # GGUF weight name -> the graph tensor multiplied by it
        self._reads = 0
        self._total_reads = 5 + 16 * shape.n_layers

    # -- helpers

    def read(self, name: str) -> np.ndarray:
        self._reads += 1
        self.progress(name, self._reads, self._total_reads)
        values = self._read(name)
        self.parameters += values.size
        return values

    def quantize(self, name: str, values: np.ndarray, table: bool = False, smooth: np.ndarray | None = None):
        o = self.options
        importance = None
        if self.imatrix is not None and not table:
            importance = self.imatrix.mean_squares(name)  # of the input before smoothing: x / s has this / s^2
            if smooth is not None:
                importance = importance / (smooth.astype(np.float64) ** 2)
        bits, block = (o.head_quant_bits, o.head_block) if table else (o.bits, o.block_size)
        try:
            return quantize_blockwise(values, bits, block, o.symmetric, importance, o.threads)
        except ValueError as e:
            raise FormatError(f"{self.where}: tensor '{name}': {e}") from None

    def smoothing(self, name: str, norm: str | None = None) -> np.ndarray | None:
        """Per-channel scales s for the input of linear layer `name` (SmoothQuant): the input is divided by s and the
        weight columns multiplied by it, (x / s) @ (W diag(s))^T = x @ W^T; None unquantized, or without a measure.

        At its default accuracy level ONNX Runtime's MatMulNBits quantizes its input to int8 in blocks along K, and
        a BERT's activations carry a few channels many times the others: they set a block's scale and the rest lose
        their bits (MiniLM at 8 bits: the worst short text at cosine 0.998 to float32). With the input's RMS per
        channel from calibration (else, for a LayerNorm's output, |gamma, beta| per channel), s = (RMS / its mean)
        ** SMOOTH_ALPHA moves most of each outlier into the weights, whose blocks have bits to spare at 8 bits.
        The linears that read a LayerNorm's output (q/k/v, ffn_up) are smoothed: one Mul before them."""
        if not self.options.quantize:
            return None
        if self.imatrix is not None:
            size = np.sqrt(self.imatrix.mean_squares(f"{name}.weight").astype(np.float64))
        elif norm is not None:
            gamma, beta = self._read(f"{norm}.weight").astype(np.float64), self._read(f"{norm}.bias").astype(np.float64)
            size = np.sqrt(gamma**2 + beta**2)
        else:
            return None
        size = np.maximum(size, 1e-6 * max(float(size.max()), 1e-30))
        return ((size / size.mean()) ** SMOOTH_ALPHA).astype(np.float32)

    def divided(self, x: str, s: np.ndarray | None, name: str) -> str:
        """x / s per channel (one Mul), or x when there is nothing to divide."""
        if s is None:
            return x
        return self.g.node("Mul", [x, self.g.constant(f"{name}.smooth", (1.0 / s).astype(np.float32))])

    def linear(self, x: str, name: str, smooth: np.ndarray | None = None) -> str:
        """x @ W^T + b, W [out, in] (GGUF `name`.weight) quantized along `in` and stored K x N. `smooth`: x arrives
        divided by it per channel and W's columns are multiplied by it."""
        g, o = self.g, self.options
        self.linear_inputs[f"{name}.weight"] = x
        weight = self.read(f"{name}.weight")
        bias = self.read(f"{name}.bias")
        if smooth is not None:
            weight = weight * smooth[None, :]
        if o.quantize:
            quant = self.quantize(f"{name}.weight", weight, smooth=smooth)
            zp = None if quant.zero_points is None else quant.zero_points.T
            w = g.dequantized_weight(
                name, quant.q.T, np.ascontiguousarray(quant.scales.T), zp, o.onnx_type, quant.block_size
            )
            self.n_quantized += 1
        else:
            w = g.constant(f"{name}.weight", np.ascontiguousarray(weight.T))
        y = g.node("MatMul", [x, w], name=f"{name}_MatMul")
        return g.node("Add", [y, g.constant(f"{name}.bias", bias)])

    def layer_norm(self, x: str, name: str, out: str | None = None) -> str:
        g = self.g
        gamma = g.constant(f"{name}.weight", self.read(f"{name}.weight"))
        beta = g.constant(f"{name}.bias", self.read(f"{name}.bias"))
        return g.node("LayerNormalization", [x, gamma, beta], [out] if out else 1, axis=-1, epsilon=self.shape.eps)

    # -- parts

    def word_embedding(self, input_ids: str) -> str:
        g, o = self.g, self.options
        name = "token_embd.weight"
        values = self.read(name)
        if not o.quantize:
            return g.node("Gather", [g.constant(name, values), input_ids], axis=0)
        quant = self.quantize(name, values, table=True)
        gather_type = GATHERABLE[o.head_type]
        table = g.quantized(f"{name}_q", quant.q, o.head_type)  # [vocab, hidden], the narrow type on disk
        if o.head_type != gather_type:
            table = g.node("Cast", [table], to=gather_type)  # folded once at load
        inputs = [g.node("Gather", [table, input_ids], axis=0), g.constant(f"{name}_scale", quant.scales)]
        inputs[1] = g.node("Gather", [inputs[1], input_ids], axis=0)
        if quant.zero_points is not None:
            zero_points = g.quantized(f"{name}_zp", quant.zero_points, gather_type)
            inputs.append(g.node("Gather", [zero_points, input_ids], axis=0))
        return g.node("DequantizeLinear", inputs, axis=2, block_size=quant.block_size)  # [batch, seq, hidden]

    def embeddings(self, input_ids: str, token_type_ids: str) -> str:
        g = self.g
        words = self.word_embedding(input_ids)
        seq = g.node("Shape", [input_ids], start=1, end=2)
        positions = g.node("Range", [self.g.const(0), g.node("Squeeze", [seq, self.g.const([0])]), self.g.const(1)])
        table = g.constant("position_embd.weight", self.read("position_embd.weight"))
        position_rows = g.node("Gather", [table, positions], axis=0)  # [seq, hidden], broadcast over the batch
        types = g.constant("token_types.weight", self.read("token_types.weight"))
        type_rows = g.node("Gather", [types, token_type_ids], axis=0)
        summed = g.node("Add", [g.node("Add", [words, position_rows]), type_rows])
        return self.layer_norm(summed, "token_embd_norm")

    def attention_bias(self, attention_mask: str) -> str:
        """0 on the keys a query may see, the float minimum on padding (finite, so a fully padded row stays
        finite): [batch, 1, 1, seq], broadcast over heads and queries; the Attention node (opset 23) wants the
        query axis spelled out: [batch, 1, seq, seq]."""
        g = self.g
        keep = g.node("Cast", [attention_mask], to=TensorProto.BOOL)
        bias = g.node("Where", [keep, self.g.const(0.0, np.float32), self.g.const(MASK_MIN, np.float32)])
        bias = g.node("Unsqueeze", [bias, self.g.const([1, 2])])
        if self.options.opset < 23:
            return bias
        seq = g.node("Shape", [attention_mask], start=1, end=2)
        full = g.node(
            "Concat", [g.node("Shape", [attention_mask], start=0, end=1), self.g.const([1]), seq, seq], axis=0
        )
        return g.node("Expand", [bias, full])

    def attention(self, i: int, x: str, bias: str) -> str:
        g, s = self.g, self.shape
        b = f"blk.{i}."
        smooth = self.smoothing(b + "attn_q", f"blk.{i - 1}.layer_output_norm" if i else "token_embd_norm")
        x = self.divided(x, smooth, b + "attn_input")
        q, k, v = (self.linear(x, b + part, smooth) for part in ("attn_q", "attn_k", "attn_v"))
        scale = 1.0 / math.sqrt(s.head_dim)
        if self.options.opset >= 23:
            out = g.node("Attention", [q, k, v, bias], q_num_heads=s.n_heads, kv_num_heads=s.n_heads, scale=scale)
        else:
            to_heads = self.g.const([0, 0, s.n_heads, s.head_dim])
            q, k, v = (g.node("Transpose", [g.node("Reshape", [t, to_heads])], perm=[0, 2, 1, 3]) for t in (q, k, v))
            scores = g.node("MatMul", [g.node("Mul", [q, self.g.const(scale, np.float32)]),
                                       g.node("Transpose", [k], perm=[0, 1, 3, 2])])  # fmt: skip
            probs = g.node("Softmax", [g.node("Add", [scores, bias])], axis=-1)
            out = g.node("Transpose", [g.node("MatMul", [probs, v])], perm=[0, 2, 1, 3])
            out = g.node("Reshape", [out, self.g.const([0, 0, s.hidden])])
        return self.linear(out, f"blk.{i}.attn_output")

    def ffn(self, i: int, x: str) -> str:
        b = f"blk.{i}."
        smooth = self.smoothing(b + "ffn_up", b + "attn_output_norm")
        up = self.linear(self.divided(x, smooth, b + "ffn_input"), b + "ffn_up", smooth)
        # the inputs of attn_output and ffn_down are left as they are: smoothing them measured worse (their weight
        # blocks lose more than the int8 inputs gain)
        return self.linear(self.g.node("Gelu", [up], approximate="none"), b + "ffn_down")

    def build(self) -> None:
        g, s = self.g, self.shape
        dims = ["batch_size", "sequence_length"]
        input_ids = g.add_input("input_ids", TensorProto.INT64, dims)
        attention_mask = g.add_input("attention_mask", TensorProto.INT64, dims)
        token_type_ids = g.add_input("token_type_ids", TensorProto.INT64, dims)
        g.add_output(OUTPUT, TensorProto.FLOAT, [*dims, s.hidden])
        x = self.embeddings(input_ids, token_type_ids)
        bias = self.attention_bias(attention_mask)
        for i in range(s.n_layers):
            x = self.layer_norm(g.node("Add", [x, self.attention(i, x, bias)]), f"blk.{i}.attn_output_norm")
            last = i == s.n_layers - 1
            x = self.layer_norm(
                g.node("Add", [x, self.ffn(i, x)]), f"blk.{i}.layer_output_norm", OUTPUT if last else None
            )


# ---------------------------------------------------------------- the folder


def encoder_shape(spec) -> EncoderShape:
    return EncoderShape(
        hidden=spec.hidden,
        n_heads=spec.n_heads,
        n_layers=spec.n_layers,
        ffn=spec.ffn,
        vocab_size=spec.vocab_size,
        n_positions=spec.context_length,
        n_token_types=spec.n_token_types,
        eps=spec.layer_norm_eps,
        hidden_act=spec.hidden_act,
    )


def default_modules() -> tuple[list[dict], dict]:
    """modules.json and 1_Pooling/config.json for a folder without them: what sentence-transformers builds for a
    plain transformers model (mean pooling, no normalisation)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": DEFAULT_POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
    ]
    return modules, {"pooling_mode": "mean"}


def module_files(spec, model_dir: Path) -> list[str]:
    """modules.json and the Pooling module's config.json, relative to the folder ([] without modules.json; the
    pooling itself was read and checked into spec.embedding). A module the folder cannot carry over is refused."""
    if not folder_files.entry_exists(model_dir, MODULES_FILE):
        return []
    where = model_dir / MODULES_FILE
    if spec.embedding.pooling is None:
        raise FormatError(f"{where}: no Pooling module; a sentence vector needs one")
    files = [MODULES_FILE]
    for module in folder_files.read_json(model_dir, MODULES_FILE):  # its shape checked by read_model_spec
        kind = module["type"].rsplit(".", 1)[-1]
        if kind not in MODULE_KINDS:
            raise FormatError(
                f"{where}: module type '{shown(module['type'])}' is not supported in an ONNX folder; supported: "
                f"{', '.join(MODULE_KINDS)}"
            )
        if kind == "Pooling":
            files.append(f"{module.get('path') or '.'}/config.json".removeprefix("./"))
    return files


def probe_encoder_importance(
    read: Callable[[str], np.ndarray], shape: EncoderShape, data_paths: list[Path] | None, tokenizer_gguf: Path, opset: int,
    threads: int | None = None, log=None,
) -> ImportanceMatrix:  # fmt: skip
    """Every linear layer's mean squared input per column, measured by ONNX Runtime on the float graph over the
    calibration text (CALIBRATION_SEQUENCES sequences of CALIBRATION_LEN tokens spread over it, [CLS] ... [SEP])."""
    import onnxruntime as ort

    from qconv.converter.calibrate import chunks_of, read_calibration_files
    from qconv.converter.onnx_export import OnnxOptions
    from qconv.runtime.tokenizer import Tokenizer

    data = read_calibration_files(data_paths).rendered(None)
    tokenizer = Tokenizer.from_gguf(tokenizer_gguf)
    tokens = tokenizer.encode(data.text, add_special=False)
    body = CALIBRATION_LEN - 2
    chunks = chunks_of(tokens, body, None)
    if not chunks:
        raise FormatError(
            f"calibration text ({data.name}) is {len(tokens)} tokens, shorter than one sequence of {body}"
        )
    if len(chunks) > CALIBRATION_SEQUENCES:  # spread over the whole text
        step = len(chunks) / CALIBRATION_SEQUENCES
        chunks = [chunks[int(i * step)] for i in range(CALIBRATION_SEQUENCES)]
    ids = np.asarray([[tokenizer.bos, *chunk, tokenizer.eos] for chunk in chunks], dtype=np.int64)
    g = GraphBuilder()
    graph = EncoderGraph(shape, read, OnnxOptions(quantize=False, opset=opset), None, g)
    graph.build()
    probes = sorted(set(graph.linear_inputs.values()))
    model = g.model("calibration", opset, "qconv", {})
    for name in probes:
        model.graph.output.add().name = name
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    if threads:
        session_options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), session_options, ["CPUExecutionProvider"])
    del model
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    sums = {}
    for name, values in zip(probes, session.run(probes, feed)):
        x = values.reshape(-1, values.shape[-1]).astype(np.float64)
        sums[name] = (x * x).sum(axis=0)
    if log:
        log(f"calibration: {len(chunks)} sequences of {CALIBRATION_LEN} tokens")
    result = ImportanceMatrix(datasets=[data.name], chunk_count=len(chunks), chunk_size=CALIBRATION_LEN)
    for tensor, name in sorted(graph.linear_inputs.items()):
        result.sums[tensor] = sums[name].astype(np.float32)
        result.counts[tensor] = float(ids.size)
    return result


def export_encoder(
    model_dir: Path, out_dir: Path, options, progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] | None = None, force: bool = False,
):  # fmt: skip
    """Write OUT_DIR (see the module's doc); on any error nothing is left behind. Called by
    onnx_export.export_onnx for an encoder folder, after options.check()."""
    import dataclasses
    import time

    from qconv.converter.onnx_export import ExportResult, estimated_bytes, model_metadata, write_tokenizer_gguf
    from qconv.converter.sources import HFSource
    from qconv.formats.atomic_write import AtomicFolder, check_output_folder
    from qconv.formats.hf_config import read_model_spec
    from qconv.formats.imatrix import read_imatrix

    start = time.perf_counter()
    model_dir = Path(model_dir)
    if options.fuse_linear:
        raise FormatError(
            f"{model_dir}: --fuse-linear is for decoders; an encoder runs one MatMulNBits per linear layer"
        )
    modules = module_files(read_model_spec(model_dir), model_dir)
    out_dir = check_output_folder(Path(out_dir), force)
    source = HFSource(model_dir)  # bad checkpoints fail here
    try:
        shape = encoder_shape(source.spec)
        copied = [name for name in COPIED_FILES if folder_files.entry_exists(model_dir, name)]
        copied += [name for name in modules if name not in copied]
        for name in copied:  # a file refused at copy time would waste the whole export: checked first
            folder_files.checked_bytes(model_dir, name)

        def read(name: str) -> np.ndarray:
            return source.safetensors.read_f32(source.hf_names[name])

        with AtomicFolder(out_dir, force) as tmp:
            write_tokenizer_gguf(source, tmp / TOKENIZER_GGUF)
            imatrix = None
            if options.imatrix is not None:
                imatrix = read_imatrix(Path(options.imatrix))
                imatrix.check_against({g: s[-1] for g, s in source.shapes.items() if len(s) == 2})
            elif options.quantize and options.calibrate:
                paths = [Path(p) for p in options.calibration_data if str(p) != "builtin"]
                imatrix = probe_encoder_importance(
                    read, shape, paths or None, tmp / TOKENIZER_GGUF, options.opset, options.threads, log
                )
                label = f"calibrated on {','.join(map(str, paths)) or 'the built-in calibration text'}"
                options = dataclasses.replace(options, imatrix_label=label)
            (tmp / ENCODER_DIR).mkdir()
            external = options.external_data
            if external is None:
                external = estimated_bytes(source.spec, options) > PROTO_LIMIT_BYTES
            g = GraphBuilder(tmp / ENCODER_DIR / DATA_FILE if external else None)
            try:
                graph = EncoderGraph(shape, read, options, imatrix, g, progress, str(model_dir))
                graph.build()
            finally:
                g.close()
            metadata = model_metadata(options, source.spec.name)
            onnx.save_model(
                g.model("bert_encoder", options.opset, "qconv", metadata), str(tmp / ENCODER_DIR / MODEL_FILE)
            )
            for name in copied:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                folder_files.copy_file(model_dir, name, tmp / name)
            if not modules:
                module_list, pooling = default_modules()
                (tmp / MODULES_FILE).write_text(json.dumps(module_list, indent=2) + "\n")
                (tmp / DEFAULT_POOLING_DIR).mkdir()
                (tmp / DEFAULT_POOLING_DIR / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
            model_bytes = (tmp / ENCODER_DIR / MODEL_FILE).stat().st_size
            data_bytes = (tmp / ENCODER_DIR / DATA_FILE).stat().st_size if external else 0
            files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    finally:
        source.close()
    return ExportResult(
        out_dir, model_bytes, data_bytes, graph.n_quantized, graph.parameters, time.perf_counter() - start, files,
        options.imatrix_label, options,
    )  # fmt: skip
