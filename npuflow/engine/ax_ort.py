"""An onnxruntime-backed session with pyaxengine's API, for running AX-layout graphs on a PC.

`OrtAxSession(path, providers=None, provider_options=None)` behaves like
`axengine.InferenceSession`: `get_inputs(shape_group=)` / `get_outputs(shape_group=)` list
`NodeArg(name, dtype, shape)` with concrete shapes per shape group, and `run(None, feed,
shape_group=g)` checks every input exactly as the real runtime does (missing inputs raise
ValueError; a wrong shape or dtype raises AssertionError with the same wording) and returns the
outputs in declared order.

ONNX has no shape groups, so the exporter (npuflow/convert/ax_export.py) writes one ONNX file
per graph with symbolic dims and records the concrete shape of every input and output per group
in the model's metadata under `SHAPE_GROUPS_KEY` (JSON: {"inputs": [[{"name", "shape"}, ...] per
group], "outputs": [...]}). A file without that key has one group: its static shapes.

Layer graphs exported by npuflow carry `CAUSAL_MASK_KEY` (the name of their mask input): their
attention is onnxruntime's causal GroupQueryAttention, so they compute exactly what the NPU
computes only for the masks the vendor loop builds (each row admits the past rows before the
chunk and the new rows up to itself, or nothing, for padding). Any other mask raises ValueError
instead of quietly computing something the chip would not.

bfloat16 tensors (numpy `ml_dtypes.bfloat16`) cannot cross `InferenceSession.run`, so inputs and
outputs go through IO binding as uint16 views typed BFLOAT16.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

SHAPE_GROUPS_KEY = "npuflow.ax.shape_groups"
CAUSAL_MASK_KEY = "npuflow.ax.causal_mask"
MASK_FLOOR = -1e4    # an entry at or below this masks its column (the vendor loop uses -65536)

_DTYPES = {TensorProto.FLOAT: np.dtype(np.float32), TensorProto.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
           TensorProto.UINT8: np.dtype(np.uint8), TensorProto.INT8: np.dtype(np.int8),
           TensorProto.UINT16: np.dtype(np.uint16), TensorProto.INT16: np.dtype(np.int16),
           TensorProto.UINT32: np.dtype(np.uint32), TensorProto.INT32: np.dtype(np.int32)}
_BF16 = np.dtype(ml_dtypes.bfloat16)


@dataclass(frozen=True)
class NodeArg:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


class OrtAxSession:
    def __init__(self, path_or_bytes: str | os.PathLike | bytes, sess_options: Any = None,
                 providers: Any = None, provider_options: Any = None, *, threads: int = 1):
        src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
        model = onnx.load(io.BytesIO(src) if isinstance(src, bytes) else src, load_external_data=False)
        types = {vi.name: _DTYPES[vi.type.tensor_type.elem_type]
                 for vi in [*model.graph.input, *model.graph.output]}
        meta = {p.key: p.value for p in model.metadata_props}
        if SHAPE_GROUPS_KEY in meta:
            groups = json.loads(meta[SHAPE_GROUPS_KEY])
        else:
            static = lambda vis: [{"name": v.name, "shape": [d.dim_value for d in v.type.tensor_type.shape.dim]}  # noqa: E731
                                  for v in vis]
            groups = {"inputs": [static(model.graph.input)], "outputs": [static(model.graph.output)]}
        mk = lambda g: [NodeArg(a["name"], types[a["name"]], tuple(int(x) for x in a["shape"])) for a in g]  # noqa: E731
        self._inputs = [mk(g) for g in groups["inputs"]]
        self._outputs = [mk(g) for g in groups["outputs"]]
        self._shape_count = len(self._inputs)
        self._mask_input = meta.get(CAUSAL_MASK_KEY)
        del model
        opts = sess_options if isinstance(sess_options, ort.SessionOptions) else ort.SessionOptions()
        if not isinstance(sess_options, ort.SessionOptions):
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.log_severity_level = 3
        self._sess: ort.InferenceSession | None = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        self.provider_options = provider_options

    # -- pyaxengine API ------------------------------------------------------------------------
    def get_inputs(self, shape_group: int = 0) -> list[NodeArg]:
        self._check_group(shape_group)
        return self._inputs[shape_group]

    def get_outputs(self, shape_group: int = 0) -> list[NodeArg]:
        self._check_group(shape_group)
        return self._outputs[shape_group]

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, np.ndarray],
            run_options: Any = None, shape_group: int = 0) -> list[np.ndarray]:
        if self._sess is None:
            raise RuntimeError("session is closed")
        missing = [i.name for i in self._inputs[0] if i.name not in input_feed]
        if missing:
            raise ValueError(f"Required inputs ({missing}) are missing from input feed ({list(input_feed)}).")
        if output_names is not None:
            names = [o.name for o in self._outputs[0]]
            for n in output_names:
                if n not in names:
                    raise ValueError(f"Output name '{n}' is not in model outputs name list.")
            if list(output_names) != names:  # pyaxengine mishandles a subset or reordering
                raise ValueError("pass output_names=None (a subset or reordering is not supported)")
        if not 0 <= shape_group < self._shape_count:
            raise ValueError(f"Invalid shape group: {shape_group}")
        binding = self._sess.io_binding()
        for arg in self._inputs[shape_group]:
            a = input_feed[arg.name]
            assert list(arg.shape) == list(a.shape) and arg.dtype == a.dtype, (
                f"model inputs({arg.name}) expect shape {arg.shape} and dtype {arg.dtype}, however gets input "
                f"with shape {a.shape} and dtype {a.dtype}")
            if arg.name == self._mask_input:
                check_causal_mask(a)
            binding.bind_ortvalue_input(arg.name, _ortvalue(np.ascontiguousarray(a)))
        outs = []
        for arg in self._outputs[shape_group]:
            buf = np.empty(arg.shape, arg.dtype)
            binding.bind_ortvalue_output(arg.name, _ortvalue(buf))
            outs.append(buf)
        self._sess.run_with_iobinding(binding)
        return outs

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        self._sess = None

    def __enter__(self) -> "OrtAxSession":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def _check_group(self, g: int) -> None:
        if not 0 <= g < self._shape_count:
            raise ValueError(f"Shape group '{g}' is out of range, total {self._shape_count}.")


def check_causal_mask(mask: np.ndarray) -> None:
    """mask [1, S, W] (additive; columns: W - S past rows, then the S new tokens) must be the
    vendor loop's: row 0 admits the first n past columns and new column 0; row r admits the same
    past columns and new columns 0..r, or nothing. Raises ValueError otherwise."""
    m = np.asarray(mask, dtype=np.float32)[0]
    S, W = m.shape
    admit = m == 0
    if not np.all(admit | (m <= MASK_FLOOR)):
        raise ValueError(f"mask holds values other than 0 and <= {MASK_FLOOR:g}; the PC mirror computes only 0 / masked")
    n_past = int(admit[0].sum()) - 1
    rows, cols = np.arange(S)[:, None], np.arange(W)[None, :]
    expect = (cols < n_past) | ((cols >= W - S) & (cols - (W - S) <= rows))
    ok = np.all(admit == expect, axis=1) | ~admit.any(axis=1)
    if n_past < 0 or n_past > W - S or not ok.all():
        bad = int(np.flatnonzero(~ok)[0]) if not ok.all() else 0
        raise ValueError(f"mask row {bad} is not causal over {n_past} past rows: the PC mirror computes only the "
                         "masks of the vendor's decode loop")


def _ortvalue(a: np.ndarray) -> ort.OrtValue:
    if a.dtype == _BF16:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(a.view(np.uint16), TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(a)
