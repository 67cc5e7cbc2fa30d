"""Calibration for `qconv to-onnx`: the importance matrix of an HF folder measured by ONNX Runtime on the
unquantized decoder the exporter builds (float32 weights, the same graph otherwise).

Every linear layer's input, and the output head's (the final norm's output, llama.cpp's `output.weight`), is an
extra graph output; the sums of squares per column over the calibration chunks form the importance matrix, under
GGUF tensor names, as `qconv calibrate` writes it. The text and its chunks are calibrate.py's (the user's files or
the built-in suites; whole chunks, BOS first). Unlike the C runtime's collector, which sees the head's input only
at the positions whose logits it computes, every position of every chunk counts here: the head is the most
sensitive matrix of a small model at 4 bits.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from qconv.converter.calibrate import chunks_of, read_calibration_files
from qconv.formats.errors import FormatError
from qconv.formats.imatrix import ImportanceMatrix

# The default calibration of to-onnx: chunks of the built-in text, spread over it (every suite is seen); enough
# for stable per-column means of the head's and layers' inputs, a few seconds for a small model.
DEFAULT_CHUNKS = 8
DEFAULT_CTX = 256


def _chat_renderer(tokenizer_gguf: Path, tokenizer):
    """The source's chat template as a render callable (None without one), for .jsonl calibration items."""
    from qconv.formats.gguf_read import read_gguf
    from qconv.runtime.chat import render_chat_for

    with read_gguf(tokenizer_gguf) as g:
        template = g.metadata.get("tokenizer.chat_template")
    if not isinstance(template, str):
        return None
    return lambda messages: render_chat_for(template, tokenizer, messages)


def probe_importance(
    source, data_paths: list[Path] | None, ctx: int = DEFAULT_CTX, max_chunks: int | None = DEFAULT_CHUNKS,
    threads: int | None = None, log=None, opset: int | None = None,
) -> ImportanceMatrix:  # fmt: skip
    """The importance matrix of source (an open HFSource) over the calibration text (None: the built-in suites)."""
    import onnxruntime as ort

    from qconv.converter.onnx_export import DecoderGraph, OnnxOptions, write_tokenizer_gguf
    from qconv.formats.onnx_graph import PROTO_LIMIT_BYTES, GraphBuilder
    from qconv.runtime.tokenizer import Tokenizer

    files = read_calibration_files(data_paths)
    with tempfile.TemporaryDirectory(prefix="qconv-onnx-calibrate-") as tmp:
        work = Path(tmp)
        write_tokenizer_gguf(source, work / "tokenizer.gguf")
        tokenizer = Tokenizer.from_gguf(work / "tokenizer.gguf")
        data = files.rendered(_chat_renderer(work / "tokenizer.gguf", tokenizer))  # .jsonl items, as calibrate's
        tokens = tokenizer.encode(data.text, add_special=False, parse_special=data.parse_special)
        if len(tokens) < ctx:
            raise FormatError(
                f"calibration text ({data.name}) is {len(tokens)} tokens, shorter than one chunk of {ctx}; give more text"
            )
        chunks = chunks_of(tokens, ctx, tokenizer.bos if tokenizer.add_bos else None)
        if max_chunks and max_chunks < len(chunks):  # spread over the whole text, as collect_imatrix does
            step = len(chunks) / max_chunks
            chunks = [chunks[int(i * step)] for i in range(max_chunks)]
        spec = source.spec
        f32_bytes = 4 * sum(int(np.prod(s)) for s in spec.expected_shapes().values())
        g = GraphBuilder(work / "model.onnx.data" if f32_bytes > PROTO_LIMIT_BYTES else None)
        try:
            decoder = DecoderGraph(source, OnnxOptions(quantize=False, opset=opset or OnnxOptions.opset), None, g)
            decoder.build()
        finally:
            g.close()
        probes = sorted(set(decoder.linear_inputs.values()))
        model = g.model("calibration", decoder.options.opset, "qconv", {})
        for name in probes:
            model.graph.output.add().name = name  # shapes are left to the runtime
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        if threads:
            session_options.intra_op_num_threads = threads
        if g.external_path is None:
            session = ort.InferenceSession(model.SerializeToString(), session_options, ["CPUExecutionProvider"])
        else:
            import onnx

            onnx.save_model(model, str(work / "model.onnx"))
            session = ort.InferenceSession(str(work / "model.onnx"), session_options, ["CPUExecutionProvider"])
        del model
        sums: dict[str, np.ndarray | float] = {name: 0.0 for name in probes}
        empty = np.zeros((1, spec.n_kv_heads, 0, spec.head_dim), dtype=np.float32)
        past = {f"past_key_values.{i}.{kind}": empty for i in range(spec.n_layers) for kind in ("key", "value")}
        for i, chunk in enumerate(chunks):
            ids = np.asarray(chunk, dtype=np.int64).reshape(1, -1)
            feed = {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "position_ids": np.arange(ids.shape[1], dtype=np.int64).reshape(1, -1),
                **past,
            }
            for name, values in zip(probes, session.run(probes, feed)):
                x = values.reshape(-1, values.shape[-1]).astype(np.float64)
                sums[name] = sums[name] + (x * x).sum(axis=0)
            if log:
                log(f"calibration chunk {i + 1}/{len(chunks)}")
    n_tokens = float(len(chunks) * ctx)
    result = ImportanceMatrix(datasets=[data.name], chunk_count=len(chunks), chunk_size=ctx)
    for tensor, name in sorted(decoder.linear_inputs.items()):
        result.sums[tensor] = sums[name].astype(np.float32)
        result.counts[tensor] = n_tokens
    return result
