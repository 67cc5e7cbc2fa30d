"""Activation statistics from the C runtime (native/stats/imatrix_collect.c): attach a collector to a model, run text
through it, read back per weight the sum of squared inputs per column and the token count."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qconv.runtime._native import ffi, lib


@dataclass
class WeightStats:
    name: str
    sums: np.ndarray  # float32 [cols] (expert tensors: [experts * cols]): sum over tokens of x_j^2
    count: int  # tokens summed
    expert_counts: np.ndarray | None = None  # expert tensors: tokens summed per expert


class ImatrixCollector:
    """Sums of squared matmul inputs while attached: `with ImatrixCollector(model) as c: model.logits(...)`."""

    def __init__(self, model=None):
        self._handle = ffi.gc(lib.qrt_imatrix_new(), lib.qrt_imatrix_free)
        if self._handle == ffi.NULL:
            raise MemoryError("qrt_imatrix_new failed")
        self._model = None
        if model is not None:
            self.attach(model)

    def attach(self, model) -> None:
        """Collect from a runtime Model's matmuls from now on (Model.record_activations)."""
        if not hasattr(model, "record_activations"):
            raise TypeError(f"{type(model).__name__} is not a runtime Model (the C runtime's)")
        self.detach()
        model.record_activations(self)
        self._model = model  # the collector must not outlive the model's use of it

    def detach(self) -> None:
        if self._model is not None:
            self._model.record_activations(None)
            self._model = None

    @property
    def native(self):
        """The qrt_imatrix* the C runtime adds to."""
        return self._handle

    def __enter__(self) -> ImatrixCollector:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def reset(self) -> None:
        lib.qrt_imatrix_reset(self._handle)

    def stats(self) -> dict[str, WeightStats]:
        out = {}
        for i in range(lib.qrt_imatrix_n_entries(self._handle)):
            name = ffi.string(lib.qrt_imatrix_entry_name(self._handle, i)).decode()
            cols = lib.qrt_imatrix_entry_cols(self._handle, i)
            experts = lib.qrt_imatrix_entry_experts(self._handle, i)
            sums = np.empty(max(1, experts) * cols, dtype=np.float32)
            lib.qrt_imatrix_entry_sums(self._handle, i, ffi.from_buffer("float[]", sums))
            counts = None
            if experts > 0:
                counts = np.array([lib.qrt_imatrix_entry_expert_count(self._handle, i, e) for e in range(experts)])
            out[name] = WeightStats(name, sums, int(lib.qrt_imatrix_entry_count(self._handle, i)), counts)
        return out
