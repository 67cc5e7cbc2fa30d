"""The runtime's public API: `Model` (a GGUF run by the C runtime), `OnnxModel` (an ONNX folder run by ONNX
Runtime), the protocol both implement (`SequenceModel`, `prefill`), and `generate`. Imported on first use, so
`import qconv.runtime` loads neither the native library nor ONNX Runtime."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Model": "qconv.runtime.model",
    "OnnxModel": "qconv.runtime.onnx_backend",
    "SequenceModel": "qconv.runtime.protocol",
    "prefill": "qconv.runtime.protocol",
    "generate": "qconv.runtime.generation",
    "TextStream": "qconv.runtime.generation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qconv.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
