"""A virtual environment where sentence-transformers' ONNX backend can run, for the check that it loads the
folders `qconv to-onnx` writes for encoders.

`SentenceTransformer(dir, backend="onnx")` needs optimum-onnx, whose only releases pin transformers < 4.58, while
the test extras carry transformers 5 (the families' references need it). So the check runs in its own venv on top
of the system site-packages (torch, onnxruntime, numpy come from there), built once under
$QCONV_CACHE/st-onnx-venv (about 15 s from pip's cache) and driven as a subprocess that writes its vectors to a
.npy file.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

from tests.bench.models import cache_root

PINS = ("transformers>=4.50,<4.58", "optimum-onnx==0.1.0", "sentence-transformers>=5,<5.2")
VERSION = "1 " + " ".join(PINS)

ENCODE = """
import sys, json
import numpy as np
import onnxruntime as ort
from sentence_transformers import SentenceTransformer

folder, texts_file, out, level = sys.argv[1:5]
kwargs = {}
if level != "default":
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", level)
    kwargs["model_kwargs"] = {"session_options": options}
model = SentenceTransformer(folder, backend="onnx", device="cpu", **kwargs)
texts = json.loads(open(texts_file, encoding="utf-8").read())
np.save(out, model.encode(texts, batch_size=32, convert_to_numpy=True))
print(json.dumps({"max_seq_length": model.max_seq_length, "modules": [type(m).__name__ for m in model]}))
"""


def venv_python() -> Path:
    """The venv's interpreter, building the venv first when it is missing or made for other pins (locked)."""
    root = cache_root() / "st-onnx-venv"
    python = root / "bin" / "python"
    stamp = root / ".qconv-pins"
    lock_path = cache_root() / ".st-onnx-venv.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (python.exists() and stamp.exists() and stamp.read_text() == VERSION):
            subprocess.run([sys.executable, "-m", "venv", "--clear", "--system-site-packages", str(root)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            stamp.write_text(VERSION)
    return python


def encode(folder: Path, texts_file: Path, out: Path, accuracy_level: str = "default") -> dict:
    """SentenceTransformer(folder, backend="onnx").encode(texts) into out (.npy); what it loaded, as a dict.
    accuracy_level: "default" (ONNX Runtime's own session options) or a MatMulNBits accuracy level ("1": f32)."""
    import json

    result = subprocess.run(
        [str(venv_python()), "-c", ENCODE, str(folder), str(texts_file), str(out), accuracy_level],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"sentence-transformers' ONNX backend failed on {folder}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
