"""Small ONNX graph-building helpers: a node/initializer collector, block-quantized weights as initializers, and
external data written as it comes (so a large model never sits in memory twice).

The QDQ weight layout is the one ONNX Runtime's CPU provider fuses into MatMulNBits: an int4/uint4/int8/uint8
K x N initializer, float32 scales (and same-typed zero points) of shape ceil(K / block) x N, and a
DequantizeLinear with axis 0 and block_size feeding the B input of a MatMul.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

# (bits, symmetric) -> the ONNX element type of quantized values (symmetric: signed, zero point 0)
QUANT_TYPES = {
    (4, True): TensorProto.INT4,
    (4, False): TensorProto.UINT4,
    (8, True): TensorProto.INT8,
    (8, False): TensorProto.UINT8,
}
# ONNX types Gather accepts that hold the same values (Gather has no 4-bit types)
GATHERABLE = {
    TensorProto.INT4: TensorProto.INT8,
    TensorProto.UINT4: TensorProto.UINT8,
    TensorProto.INT8: TensorProto.INT8,
    TensorProto.UINT8: TensorProto.UINT8,
}
# ONNX's protobuf cannot exceed 2 GiB; initializers move to a side file well before that
PROTO_LIMIT_BYTES = 2**31 - 64 * 2**20


def pack_values(values: np.ndarray, onnx_type: int) -> bytes:
    """Raw bytes of a tensor in ONNX's layout: 4-bit values two per byte, the first in the low nibble."""
    flat = np.ascontiguousarray(values).reshape(-1)
    if onnx_type in (TensorProto.INT4, TensorProto.UINT4):
        nibbles = flat.astype(np.uint8) & 0x0F
        if nibbles.size % 2:
            nibbles = np.append(nibbles, np.uint8(0))
        return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()
    return flat.tobytes()


class GraphBuilder:
    """Nodes, initializers, inputs and outputs of one graph; initializer data inline or in an external file."""

    def __init__(self, external_data: Path | None = None):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()
        self._types: dict[str, int] = {}
        self._counter = 0
        self._consts: dict[tuple, str] = {}
        self.external_path = Path(external_data) if external_data else None
        self._external = open(self.external_path, "wb") if self.external_path else None
        self.data_bytes = 0  # bytes of initializer data written so far

    def close(self) -> None:
        if self._external:
            self._external.close()
            self._external = None

    def fresh(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}_{self._counter}"

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, name: str | None = None, **attrs):
        """Add a node; returns its output name (or the list of names when several)."""
        if isinstance(outputs, int):
            outputs = [self.fresh(f"{op}_out") for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name or self.fresh(op), **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def _claim(self, name: str) -> None:
        if name in self._names:
            raise ValueError(f"initializer '{name}' added twice")
        self._names.add(name)

    def raw_initializer(self, name: str, onnx_type: int, dims: tuple[int, ...], raw: bytes) -> str:
        self._claim(name)
        self._types[name] = onnx_type
        tensor = TensorProto(name=name, data_type=onnx_type, dims=list(dims))
        if self._external is not None and len(raw) >= 1024:
            offset = self._external.tell()
            pad = -offset % 64  # aligned, so a runtime may map it
            if pad:
                self._external.write(b"\0" * pad)
                offset += pad
            self._external.write(raw)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", self.external_path.name), ("offset", offset), ("length", len(raw))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
        else:
            tensor.raw_data = raw
        self.data_bytes += len(raw)
        self.initializers.append(tensor)
        return name

    def elem_type(self, name: str) -> int | None:
        """The element type of an initializer added so far (None for other names)."""
        return self._types.get(name)

    def constant(self, name: str, array: np.ndarray) -> str:
        """A float32/int64/bool initializer from a numpy array."""
        array = np.asarray(array)
        onnx_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        return self.raw_initializer(name, onnx_type, array.shape, np.ascontiguousarray(array).tobytes())

    def const(self, values, dtype=np.int64) -> str:
        """A small constant (shapes, axes, scalars) as an initializer, made once per distinct value."""
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.constant(self.fresh("const"), array)
        return self._consts[key]

    def quantized(self, name: str, values: np.ndarray, onnx_type: int) -> str:
        return self.raw_initializer(name, onnx_type, values.shape, pack_values(values, onnx_type))

    def dequantized_weight(
        self,
        name: str,
        q_kn: np.ndarray,
        scales: np.ndarray,
        zero_points: np.ndarray | None,
        onnx_type: int,
        block_size: int,
    ) -> str:
        """A K x N QDQ weight: quantized values, scales (and zero points) as initializers, then DequantizeLinear
        (axis 0, block_size). Returns the float K x N output to feed MatMul's B input."""
        inputs = [self.quantized(f"{name}_q", q_kn, onnx_type), self.constant(f"{name}_scale", scales)]
        if zero_points is not None:
            inputs.append(self.quantized(f"{name}_zp", zero_points, onnx_type))
        return self.node(
            "DequantizeLinear", inputs, [f"{name}_dq"], name=f"{name}_DequantizeLinear", axis=0, block_size=block_size
        )

    def add_input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, name: str, elem_type: int, shape: list) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def model(self, graph_name: str, opset: int, producer: str, metadata: dict[str, str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=producer)
        # IR 10 brought int4/uint4; a newer opset may need a newer IR (opset 23: IR 11)
        model.ir_version = max(10, helper.find_min_ir_version_for(list(model.opset_import)))
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model
