"""An ONNX folder written by `qconv to-onnx`, run through ONNX Runtime with the interface of the C runtime's Model.

An encoder folder (sentence-transformers' ONNX layout, written by `qconv to-onnx` from a BERT folder) is run by
OnnxEncoder: `embed(texts)` tokenizes each text with the same C tokenizer (WordPiece, cut at the folder's
max_seq_length), runs batches padded to their longest text, and pools and normalises as the folder's
sentence-transformers modules say (formats/sentence_transformers.py, the reader the GGUF converter uses).

Tokenization uses qconv's C tokenizer over the folder's tokenizer.gguf (tensorless, the same metadata as our
GGUF files), so ids, pieces and sampling match the GGUF path exactly; no HF tokenizer is needed at run time.
The KV cache is the graph's present.* outputs fed back as past_key_values.* on the next call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from qconv.formats import folder_files
from qconv.formats.errors import FormatError
from qconv.formats.gguf_read import read_gguf
from qconv.formats.printable import shown
from qconv.formats.sentence_transformers import MODULES_FILE, POOLING_CLS, POOLING_LAST, POOLING_MEAN
from qconv.runtime.chat import render_chat_for
from qconv.runtime.generation import generate
from qconv.runtime.model import Timings
from qconv.runtime.tokenizer import Tokenizer

MODEL_FILE = "model.onnx"
ENCODER_MODEL = "onnx/model.onnx"  # sentence-transformers' ONNX layout
ENCODER_OUTPUT = "last_hidden_state"
ENCODER_INPUTS = ("input_ids", "attention_mask")  # and token_type_ids, when the graph takes them (zeros)
# Encoders run their MatMulNBits in float32 (accuracy level 1) unless told otherwise: ONNX Runtime's default int8
# activations cost MiniLM at 8 bits a worst sentence cosine of 0.998 against float32 (0.9996 with level 1), and
# a batch of sentences is no slower so.
ENCODER_ACCURACY_LEVEL = 1
EMBED_BATCH = 32
TOKENIZER_GGUF = "tokenizer.gguf"
GENAI_CONFIG = "genai_config.json"
# genai_config.json's decoder fields this runtime reads (in the order of n_layers, n_kv_heads, head_dim)
GENAI_DECODER_FIELDS = ("num_hidden_layers", "num_key_value_heads", "head_size")
MAX_GENAI_INT = 2**31 - 1
# how ONNX Runtime computes the MatMulNBits it fuses from DequantizeLinear -> MatMul: 0 (unset: float32), 1 fp32,
# 2 fp16, 3 bf16, 4 int8 activations (ONNX Runtime's default, the fastest on CPU)
ACCURACY_KEY = "session.qdq_matmulnbits_accuracy_level"


def is_onnx_folder(path: Path) -> bool:
    """A decoder folder written by `qconv to-onnx` (model.onnx and genai_config.json)."""
    path = Path(path)
    return path.is_dir() and (path / MODEL_FILE).is_file() and (path / GENAI_CONFIG).is_file()


def is_onnx_encoder_folder(path: Path) -> bool:
    """An encoder folder in sentence-transformers' ONNX layout (onnx/model.onnx and modules.json)."""
    path = Path(path)
    return path.is_dir() and (path / ENCODER_MODEL).is_file() and (path / MODULES_FILE).is_file()


def _session(model_file: Path, threads: int | None, accuracy_level: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if threads and threads > 0 else (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if accuracy_level is not None:
        options.add_session_config_entry(ACCURACY_KEY, str(int(accuracy_level)))
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"]), options


class OnnxModel:
    """OnnxModel(out_dir, threads=None): logits, cached evaluation and generation over ONNX Runtime; for an
    encoder folder (is_onnx_encoder_folder) it gives an OnnxEncoder, whose `embed` answers as Model's does."""

    def __new__(cls, out_dir: str | Path, *args, **kwargs):
        if cls is OnnxModel and not is_onnx_folder(Path(out_dir)) and is_onnx_encoder_folder(Path(out_dir)):
            return OnnxEncoder(out_dir, *args, **kwargs)  # not an OnnxModel: its __init__ is not run
        return super().__new__(cls)

    is_encoder = False

    def __init__(self, out_dir: str | Path, threads: int | None = None, accuracy_level: int | None = None):
        self.path = Path(out_dir)
        if not is_onnx_folder(self.path):
            raise FormatError(
                f"{self.path}: not an ONNX model folder (expected {MODEL_FILE} and {GENAI_CONFIG}, or "
                f"{ENCODER_MODEL} and {MODULES_FILE})"
            )
        self._read_genai_config()
        model_file = folder_files.resolve_in_folder(self.path, MODEL_FILE)
        tokenizer_file = folder_files.resolve_in_folder(self.path, TOKENIZER_GGUF)
        self.tokenizer = Tokenizer.from_gguf(tokenizer_file)
        self.n_vocab = self.tokenizer.n_vocab
        self.session, options = _session(model_file, threads, accuracy_level)
        self._check_against_inputs()
        self._output_names = [o.name for o in self.session.get_outputs()]
        self.threads = options.intra_op_num_threads
        self.n_ctx = self.max_length
        self.kv_bytes = 0  # grows with the sequence: ONNX Runtime allocates present.* per call
        with read_gguf(tokenizer_file) as meta:
            template = meta.metadata.get("tokenizer.chat_template")
        self._chat_template = template if isinstance(template, str) else None
        self.reset_timings()
        self.reset()

    def _read_genai_config(self) -> None:
        """The decoder's shape from genai_config.json, each field a plausible positive integer."""
        where = self.path / GENAI_CONFIG
        config = folder_files.read_json_object(self.path, GENAI_CONFIG)
        model, search = config.get("model"), config.get("search")
        decoder = model.get("decoder") if isinstance(model, dict) else None
        if not isinstance(decoder, dict) or not isinstance(search, dict):
            raise FormatError(f"{where}: expected the objects 'model.decoder' and 'search'")
        fields = [(decoder, "model.decoder.", key) for key in GENAI_DECODER_FIELDS]
        fields.append((search, "search.", "max_length"))
        values = []
        for table, prefix, key in fields:
            value = table.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_GENAI_INT:
                raise FormatError(f"{where}: '{prefix}{key}' must be a positive integer, found {shown(value)}")
            values.append(value)
        self.n_layers, self.n_kv_heads, self.head_dim, self.max_length = values

    def _check_against_inputs(self) -> None:
        """genai_config.json's numbers against the graph, before the cache (a list per layer) is built from them."""
        where = self.path / GENAI_CONFIG
        past = {i.name: i.shape for i in self.session.get_inputs() if i.name.startswith("past_key_values.")}
        if len(past) != 2 * self.n_layers:
            raise FormatError(
                f"{where}: 'model.decoder.num_hidden_layers' is {self.n_layers}, {MODEL_FILE} has "
                f"{len(past) // 2} layers of past_key_values inputs"
            )
        expected = {1: ("num_key_value_heads", self.n_kv_heads), 3: ("head_size", self.head_dim)}
        for name, shape in past.items():
            for axis, (key, value) in expected.items():
                dim = shape[axis] if len(shape) == 4 else None  # [batch, kv_heads, past, head_dim]
                if isinstance(dim, int) and dim != value:
                    raise FormatError(
                        f"{where}: 'model.decoder.{key}' is {value}, input {shown(name)} of {MODEL_FILE} has {dim}"
                    )

    # -- tokens

    @property
    def bos(self) -> int:
        return self.tokenizer.bos

    @property
    def eos(self) -> int:
        return self.tokenizer.eos

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    # -- evaluation (qconv.runtime.protocol: one sequence; a server queues requests for it)

    n_seq = 1

    @property
    def n_past(self) -> int:
        return self._past[0].shape[2]

    def _check_seq(self, seq: int | None) -> None:
        if seq not in (None, 0):
            raise FormatError(f"sequence {seq} outside 0..0 (an ONNX model holds one)")

    def reset(self, seq: int | None = None) -> None:
        """Empty the KV cache."""
        self._check_seq(seq)
        self._cached: list[int] = []
        empty = np.zeros((1, self.n_kv_heads, 0, self.head_dim), dtype=np.float32)
        self._past = [empty] * (2 * self.n_layers)

    def cached(self, seq: int = 0) -> list[int]:
        self._check_seq(seq)
        return list(self._cached)

    def truncate(self, n: int, seq: int = 0) -> bool:
        self._check_seq(seq)
        if not 0 <= n <= len(self._cached):
            return False
        self._past = [np.ascontiguousarray(p[:, :, :n]) for p in self._past]
        del self._cached[n:]
        return True

    def evaluate(self, tokens: Sequence[int], seq: int = 0, all_logits: bool = False) -> np.ndarray:
        """Append tokens to the cache; the logits after the last one (n_vocab,), or of every one."""
        self._check_seq(seq)
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise FormatError("evaluate: no tokens")
        if len(self._cached) + len(tokens) > self.n_ctx:
            raise FormatError(
                f"context full: {len(self._cached)} cached + {len(tokens)} new tokens > context {self.n_ctx}"
            )
        start = time.perf_counter()
        rows = self.eval(tokens)
        self._cached.extend(tokens)
        slot = 0 if len(tokens) > 1 else 2
        self._timings[slot] += len(tokens)
        self._timings[slot + 1] += time.perf_counter() - start
        return np.ascontiguousarray(rows if all_logits else rows[-1], dtype=np.float32)

    def evaluate_batch(self, steps: Sequence[tuple[int, Sequence[int]]]) -> list[np.ndarray]:
        if len(steps) > 1:
            raise FormatError("evaluate_batch: an ONNX model holds one sequence")
        return [self.evaluate(tokens, seq) for seq, tokens in steps]

    def close(self) -> None:
        self.session = None

    def __enter__(self) -> OnnxModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def eval(self, tokens) -> np.ndarray:
        """Append tokens to the cache; returns the logits of each of them, (len(tokens), n_vocab) float32."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(1, -1)
        if ids.shape[1] == 0:
            return np.zeros((0, self.n_vocab), dtype=np.float32)
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            raise ValueError(f"token id out of range 0..{self.n_vocab - 1}")
        past, n = self.n_past, ids.shape[1]
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones((1, past + n), dtype=np.int64),
            "position_ids": np.arange(past, past + n, dtype=np.int64).reshape(1, -1),
        }
        for i in range(self.n_layers):
            feed[f"past_key_values.{i}.key"] = self._past[2 * i]
            feed[f"past_key_values.{i}.value"] = self._past[2 * i + 1]
        outputs = dict(zip(self._output_names, self.session.run(self._output_names, feed)))
        self._past = [outputs[f"present.{i}.{kind}"] for i in range(self.n_layers) for kind in ("key", "value")]
        return outputs["logits"][0]

    def logits(self, tokens) -> np.ndarray:
        """Logits at every position of tokens, from an empty cache: (len(tokens), n_vocab)."""
        self.reset()
        return self.eval(tokens)

    # -- generation

    def generate(self, prompt: str | list[int], max_tokens: int = 128, **options) -> Iterator[str]:
        """Stream generated text; see qconv.runtime.generation.generate for the options."""
        return generate(self, prompt, max_tokens, **options)

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, tools=None) -> str:
        if self._chat_template is None:
            raise FormatError(f"{self.path}: the folder has no chat template")
        return render_chat_for(self._chat_template, self.tokenizer, messages, add_generation_prompt, tools=tools)

    def chat(self, messages: list[dict], max_tokens: int = 128, *, tools=None, **options) -> Iterator[str]:
        """Stream the answer to a conversation, as Model.chat."""
        return self.generate(self.render_chat(messages, True, tools=tools), max_tokens, **options)

    def timings(self) -> Timings:
        prompt_tokens, prompt_s, gen_tokens, gen_s = self._timings
        return Timings(int(prompt_tokens), prompt_s, int(gen_tokens), gen_s)

    def reset_timings(self) -> None:
        self._timings = [0, 0.0, 0, 0.0]

    @property
    def description(self) -> str:
        return f"ONNX decoder, {self.n_layers} layers, vocab {self.n_vocab} (ONNX Runtime, CPU)"

    def kernel_variants(self) -> dict[str, str]:
        return {"onnx": "onnxruntime CPUExecutionProvider"}

    def generate_ids(self, prompt_ids: list[int], max_tokens: int, use_cache: bool = True) -> list[int]:
        """Greedy continuation ids (no text), for checks."""
        sequence = list(prompt_ids)
        last = self.logits(sequence)[-1]
        out = []
        for _ in range(max_tokens):
            token = int(np.argmax(last))
            out.append(token)
            sequence.append(token)
            last = self.eval([token])[-1] if use_cache else self.logits(sequence)[-1]
        return out


class OnnxEncoder:
    """OnnxEncoder(folder, threads=None): sentence vectors of a BERT encoder folder over ONNX Runtime, with the
    interface of the C runtime's Model.embed (n_embd, is_encoder, embed)."""

    is_encoder = True

    def __init__(self, folder: str | Path, threads: int | None = None, accuracy_level: int | None = None):
        from qconv.formats.hf_config import read_model_spec

        self.path = Path(folder)
        if not is_onnx_encoder_folder(self.path):
            raise FormatError(f"{self.path}: not an ONNX encoder folder (expected {ENCODER_MODEL} and {MODULES_FILE})")
        spec = read_model_spec(self.path)  # config.json, modules.json, 1_Pooling/, sentence_bert_config.json
        if not spec.arch.encoder or spec.embedding is None:
            raise FormatError(f"{self.path / 'config.json'}: {spec.architecture} is not an encoder")
        if spec.embedding.pooling is None:
            raise FormatError(f"{self.path / MODULES_FILE}: no Pooling module; a sentence vector needs one")
        self.pooling = spec.embedding.pooling
        self.normalize = spec.embedding.normalize
        self.n_embd = spec.hidden
        self.n_ctx = spec.context_length
        self.max_tokens = spec.embedding.max_seq_length or spec.context_length
        self.tokenizer = Tokenizer.from_gguf(folder_files.resolve_in_folder(self.path, TOKENIZER_GGUF))
        level = ENCODER_ACCURACY_LEVEL if accuracy_level is None else accuracy_level
        self.session, options = _session(folder_files.resolve_in_folder(self.path, ENCODER_MODEL), threads, level)
        self.threads = options.intra_op_num_threads
        self.kv_bytes = 0  # no cache: every text runs whole
        self._check_graph()

    def _check_graph(self) -> None:
        where = self.path / ENCODER_MODEL
        inputs = {i.name for i in self.session.get_inputs()}
        missing = [name for name in ENCODER_INPUTS if name not in inputs]
        unknown = sorted(inputs - {*ENCODER_INPUTS, "token_type_ids"})
        if missing or unknown:
            raise FormatError(
                f"{where}: expected inputs {', '.join(ENCODER_INPUTS)} (and token_type_ids), found "
                f"{', '.join(sorted(inputs))}"
            )
        self._token_types = "token_type_ids" in inputs
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if ENCODER_OUTPUT not in outputs:
            raise FormatError(f"{where}: expected the output {ENCODER_OUTPUT}, found {', '.join(outputs)}")
        width = outputs[ENCODER_OUTPUT][-1] if outputs[ENCODER_OUTPUT] else None
        if isinstance(width, int) and width != self.n_embd:
            raise FormatError(f"{where}: {ENCODER_OUTPUT} is {width} wide, config.json's hidden_size {self.n_embd}")

    def tokenize(self, text: str) -> list[int]:
        """[CLS] text [SEP] as the model sees it: the text's pieces cut to max_seq_length - 2."""
        return self.tokenizer.encode_truncated(text, self.max_tokens)

    def embed(self, texts: Sequence[str], batch_size: int = EMBED_BATCH) -> np.ndarray:
        """(len(texts), n_embd) float32: each text's pooled (and, as the folder says, L2-normalised) vector.
        Texts run in batches of similar length (fewer padded positions); the order of the result is theirs."""
        ids = [self.tokenize(text) for text in texts]
        out = np.zeros((len(ids), self.n_embd), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), max(1, batch_size)):
            rows = order[start : start + max(1, batch_size)]
            out[rows] = self._embed_batch([ids[i] for i in rows])
        return out

    def _embed_batch(self, batch: list[list[int]]) -> np.ndarray:
        lengths = np.array([len(seq) for seq in batch])
        input_ids = np.zeros((len(batch), int(lengths.max())), dtype=np.int64)  # padded on the right
        for row, seq in enumerate(batch):
            input_ids[row, : len(seq)] = seq
        mask = (np.arange(input_ids.shape[1]) < lengths[:, None]).astype(np.int64)
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if self._token_types:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        hidden = self.session.run([ENCODER_OUTPUT], feed)[0]
        return pool(hidden, lengths, self.pooling, self.normalize)

    @property
    def description(self) -> str:
        return f"ONNX encoder, {self.n_embd}-wide vectors, up to {self.max_tokens} tokens (ONNX Runtime, CPU)"

    def kernel_variants(self) -> dict[str, str]:
        return {"onnx": "onnxruntime CPUExecutionProvider"}


def pool(hidden: np.ndarray, lengths: np.ndarray, pooling: int, normalize: bool) -> np.ndarray:
    """Sentence vectors from a padded batch of hidden states [batch, seq, dim] (each row's first `lengths` positions
    are its tokens): mean, first ([CLS]) or last token, as llama.cpp's pooling types 1, 2, 3; L2-normalised as
    torch's F.normalize (norm floored at 1e-12) when asked."""
    rows = np.arange(hidden.shape[0])
    if pooling == POOLING_MEAN:
        mask = (np.arange(hidden.shape[1]) < lengths[:, None])[..., None]
        vectors = (hidden * mask).sum(axis=1, dtype=np.float64) / np.maximum(lengths, 1)[:, None]
    elif pooling == POOLING_CLS:
        vectors = hidden[:, 0].astype(np.float64)
    elif pooling == POOLING_LAST:
        vectors = hidden[rows, np.maximum(lengths, 1) - 1].astype(np.float64)
    else:
        raise FormatError(f"pooling type {pooling} is not supported")
    if normalize:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors.astype(np.float32)
