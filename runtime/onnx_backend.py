"""An ONNX folder written by `qconv to-onnx`, run through ONNX Runtime with the interface of the C runtime's Model.

Tokenization uses qconv's C tokenizer over the folder's tokenizer.gguf (tensorless, the same metadata as our
GGUF files), so ids, pieces and sampling match the GGUF path exactly; no HF tokenizer is needed at run time.
The KV cache is the graph's present.* outputs fed back as past_key_values.* on the next call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from qconv.formats.errors import FormatError
from qconv.runtime.tokenizer import Sampler, Tokenizer

MODEL_FILE = "model.onnx"
TOKENIZER_GGUF = "tokenizer.gguf"
GENAI_CONFIG = "genai_config.json"
# how ONNX Runtime computes the MatMulNBits it fuses from DequantizeLinear -> MatMul: 0 (unset: float32), 1 fp32,
# 2 fp16, 3 bf16, 4 int8 activations (ONNX Runtime's default, the fastest on CPU)
ACCURACY_KEY = "session.qdq_matmulnbits_accuracy_level"


def is_onnx_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / MODEL_FILE).is_file() and (path / GENAI_CONFIG).is_file()


class OnnxModel:
    """OnnxModel(out_dir, threads=None): logits, cached evaluation and generation over ONNX Runtime."""

    def __init__(self, out_dir: str | Path, threads: int | None = None, accuracy_level: int | None = None):
        import onnxruntime as ort

        self.path = Path(out_dir)
        if not is_onnx_folder(self.path):
            raise FormatError(f"{self.path}: not an ONNX model folder (expected {MODEL_FILE} and {GENAI_CONFIG})")
        try:
            decoder = json.loads((self.path / GENAI_CONFIG).read_text())["model"]["decoder"]
            self.n_layers = int(decoder["num_hidden_layers"])
            self.n_kv_heads = int(decoder["num_key_value_heads"])
            self.head_dim = int(decoder["head_size"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{self.path / GENAI_CONFIG}: missing or malformed decoder fields ({e})") from None
        self.tokenizer = Tokenizer.from_gguf(self.path / TOKENIZER_GGUF)
        self.n_vocab = self.tokenizer.n_vocab
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads and threads > 0 else (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if accuracy_level is not None:
            options.add_session_config_entry(ACCURACY_KEY, str(int(accuracy_level)))
        self.session = ort.InferenceSession(str(self.path / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self.session.get_outputs()]
        self.reset()

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

    # -- evaluation

    @property
    def n_past(self) -> int:
        return self._past[0].shape[2]

    def reset(self) -> None:
        """Empty the KV cache."""
        empty = np.zeros((1, self.n_kv_heads, 0, self.head_dim), dtype=np.float32)
        self._past = [empty] * (2 * self.n_layers)

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

    def generate(
        self,
        prompt: str | list[int],
        max_tokens: int = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: int = 0,
        use_cache: bool = True,
        add_special: bool = True,
    ) -> Iterator[str]:
        """Text pieces of the continuation of prompt (text or ids), stopping at an end-of-generation token.

        temperature <= 0 is greedy. use_cache=False recomputes the whole sequence each step (a check of the
        cache, not a mode to use)."""
        ids = self.tokenize(prompt, add_special=add_special) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("empty prompt")
        sampler = Sampler(
            self.n_vocab,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            seed=seed,
        )
        for token in ids:
            sampler.accept(token)
        detok = self.tokenizer.stream()
        sequence = list(ids)
        last = self.logits(ids)[-1]
        for _ in range(max_tokens):
            token = sampler.sample(np.ascontiguousarray(last, dtype=np.float32))
            if self.tokenizer.is_eog(token):
                break
            sampler.accept(token)
            sequence.append(token)
            piece = detok.feed(token)
            if piece:
                yield piece
            last = self.eval([token])[-1] if use_cache else self.logits(sequence)[-1]
        rest = detok.flush()
        if rest:
            yield rest

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
