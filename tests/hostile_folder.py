"""The damaged model folder the hostile-input tests start from: a private copy of a small random llama folder, and a
file beside it that stands in for /etc/passwd (no byte of it may reach an error message)."""

from __future__ import annotations

import shutil
from pathlib import Path

SHAPE = dict(arch="llama", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, vocab=300, dtype="f32")
SECRET = "root:x:0:0:secret-line-from-outside:/root:/bin/bash\n"


def private_model(random_model_factory, tmp_path: Path) -> Path:
    """A copy of the random folder the test may damage."""
    dst = tmp_path / "model"
    shutil.copytree(random_model_factory(**SHAPE), dst)
    return dst


def secret_outside(tmp_path: Path) -> Path:
    """A file beside the model folder, standing in for /etc/passwd."""
    path = tmp_path / "outside" / "passwd"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path
