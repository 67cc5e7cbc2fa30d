"""sentence-transformers' module files -> how an encoder's hidden states become one sentence vector.

A sentence-transformers folder lists its pipeline in `modules.json`: the Transformer (the HF model in the folder
itself), a Pooling module whose `config.json` names the pooling, and often a Normalize module (L2 normalisation;
it has no files, so there may be no `2_Normalize/` folder at all). `sentence_bert_config.json` says how many tokens
a text keeps (`max_seq_length`); the tokenizer's own truncation in tokenizer.json is not that length.

llama.cpp's converter (conversion/base.py, _try_set_pooling_type) writes `{arch}.pooling_type` only when
modules.json names a Pooling module; a folder without one gets no key. We do the same, and refuse pooling modes
llama.cpp (and our runtime) cannot run instead of writing a file that embeds differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from qconv.formats import folder_files
from qconv.formats.errors import FormatError
from qconv.formats.printable import shown

MODULES_FILE = "modules.json"
SENTENCE_BERT_CONFIG = "sentence_bert_config.json"
POOLING_MODULE = "sentence_transformers.models.Pooling"
NORMALIZE_MODULE = "sentence_transformers.models.Normalize"

# llama.cpp's enum llama_pooling_type (and gguf.PoolingType): what `{arch}.pooling_type` holds
POOLING_NONE, POOLING_MEAN, POOLING_CLS, POOLING_LAST = 0, 1, 2, 3
POOLING_TYPES = {"mean": POOLING_MEAN, "cls": POOLING_CLS, "lasttoken": POOLING_LAST}
# Pooling config.json's boolean spelling of each mode (sentence-transformers 2.x and 3.x write these keys)
POOLING_MODE_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}


@dataclass(frozen=True)
class SentenceEmbedding:
    pooling: int | None  # llama.cpp's pooling type; None: the folder names none (no key is written)
    normalize: bool  # a Normalize module follows the pooling
    max_seq_length: int | None  # tokens per text including [CLS] and [SEP]; None: the model's context


def _modules(model_dir: Path) -> list[dict]:
    where = model_dir / MODULES_FILE
    modules = folder_files.read_json(model_dir, MODULES_FILE)
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type"), str) for m in modules
    ):
        raise FormatError(f"{where}: expected a list of modules, each an object with a 'type'")
    return modules


def _module_folder(module: dict, where: Path) -> str:
    path = module.get("path", "")
    if not isinstance(path, str) or PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
        raise FormatError(f"{where}: module path '{shown(path)}' must be a folder inside the model folder")
    return path


def _pooling_mode(model_dir: Path, folder: str) -> int:
    name = str(PurePosixPath(folder) / "config.json") if folder else "config.json"
    where = model_dir / name
    if not folder_files.entry_exists(model_dir, name):
        raise FormatError(f"{where}: missing (modules.json lists a Pooling module there)")
    config = folder_files.read_json_object(model_dir, name)
    modes = [mode for key, mode in POOLING_MODE_KEYS.items() if config.get(key) is True]
    if not modes and isinstance(config.get("pooling_mode"), str):  # the single-string spelling
        modes = [config["pooling_mode"]]
    if len(modes) != 1 or modes[0] not in POOLING_TYPES:
        found = " + ".join(modes) if modes else "none"
        raise FormatError(
            f"{where}: pooling mode '{shown(found)}' is not supported; supported: one of {', '.join(POOLING_TYPES)}"
        )
    return POOLING_TYPES[modes[0]]


def _max_seq_length(model_dir: Path) -> int | None:
    if not folder_files.entry_exists(model_dir, SENTENCE_BERT_CONFIG):
        return None
    value = folder_files.read_json_object(model_dir, SENTENCE_BERT_CONFIG).get("max_seq_length")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 2 < value <= 2**31 - 1:
        raise FormatError(
            f"{model_dir / SENTENCE_BERT_CONFIG}: 'max_seq_length' must be an integer above 2, found {shown(value)}"
        )
    return value


def read_sentence_embedding(model_dir: Path, context_length: int) -> SentenceEmbedding:
    """Pooling, normalisation and text length of an encoder folder (a folder without modules.json: no pooling
    named, not normalised). max_seq_length is capped at the model's context, as sentence-transformers caps it."""
    model_dir = Path(model_dir)
    pooling, normalize = None, False
    if folder_files.entry_exists(model_dir, MODULES_FILE):
        modules = _modules(model_dir)
        where = model_dir / MODULES_FILE
        poolers = [m for m in modules if m["type"] == POOLING_MODULE or m["type"].endswith(".Pooling")]
        if poolers:
            pooling = _pooling_mode(model_dir, _module_folder(poolers[0], where))
        normalize = any(m["type"] == NORMALIZE_MODULE or m["type"].endswith(".Normalize") for m in modules)
    max_seq_length = _max_seq_length(model_dir)
    if max_seq_length is not None:
        max_seq_length = min(max_seq_length, context_length)
    return SentenceEmbedding(pooling, normalize, max_seq_length)
