"""The provider sessions behind the mirror's InferenceSession (ax_ort.py): pyaxengine's
AXEngineSession (on-board NPU) and AXCLRTSession (M.2/PCIe card), computed on onnxruntime.

What they reproduce of pyaxengine (axengine/_base_session.py, _axe.py, _axclrt.py):
- NodeArg is a plain object with name, dtype (numpy dtype) and shape, a list of ints for both
  providers; it has no equality of its own.
- get_inputs(g) / get_outputs(g): a g above the group count N raises ValueError("Shape group 'g'
  is out of range, total N."); g == N indexes past the per-group list (IndexError); a negative g
  indexes from the end, as a list does.
- run(output_names, input_feed, run_options=None, shape_group=0): inputs missing by group 0's
  names raise ValueError, so do output names not among group 0's; with output_names None the
  names are read with get_outputs(shape_group) before the group is checked (so g == N raises
  IndexError, g > N ValueError there); then a group outside [0, N) raises ValueError("Invalid
  shape group: g"). Every fed input named in group g must match its shape and dtype exactly
  (AssertionError); other names are ignored. Outputs come in group order, picked through
  output_names.index: an output left out raises ValueError, a reordering returns them permuted.
- Lifetime: there is no close(). AXEngineSession frees its handle in __del__, i.e. when its last
  reference goes. AXCLRTSession also appends itself to the module's _all_model_instances (which
  an atexit hook unloads), so it lives until the process exits unless _unload() is called;
  _unload() may be called again. After unloading, run fails: RuntimeError("Failed to run model.")
  on the on-board NPU (assuming the engine library refuses its NULL handle), TypeError (its IO
  handle is None) on the card.
- AXCLRTSession takes the card from provider_options[0]["device_id"] (default 0) and raises
  RuntimeError for an index past the cards it finds (the mirror has CARDS of them).

Where the mirror cannot follow: on the chip an input of group g that is not fed keeps whatever
its device buffer held; the mirror raises RuntimeError instead of computing on stale data.

ONNX has no shape groups, so the exporter (npuflow/convert/ax_export.py) writes one ONNX file per
graph with symbolic dims and records the concrete shape of every input and output per group in
the model's metadata under SHAPE_GROUPS_KEY (JSON: {"inputs": [[{"name", "shape"}, ...] per
group], "outputs": [...]}). A file without that key has one group: its static shapes. Layer
graphs carry CAUSAL_MASK_KEY (the name of their mask input): their attention is onnxruntime's
causal GroupQueryAttention, so every mask fed to it is checked (check_causal_mask).
bfloat16 tensors cannot cross onnxruntime's run, so they go through IO binding as uint16 views
typed BFLOAT16.
"""
from __future__ import annotations

import io
import json
import os
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from .ort_options import session_options

SHAPE_GROUPS_KEY = "npuflow.ax.shape_groups"
CAUSAL_MASK_KEY = "npuflow.ax.causal_mask"
MASK_FLOOR = -1e4    # an entry at or below this masks its column (the vendor loop uses -65536)
CARDS = 1            # AXCL cards the mirror "finds"
SOC_NAME = "AX650N"

_DTYPES = {TensorProto.FLOAT: np.dtype(np.float32), TensorProto.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
           TensorProto.UINT8: np.dtype(np.uint8), TensorProto.INT8: np.dtype(np.int8),
           TensorProto.UINT16: np.dtype(np.uint16), TensorProto.INT16: np.dtype(np.int16),
           TensorProto.UINT32: np.dtype(np.uint32), TensorProto.INT32: np.dtype(np.int32)}
_BF16 = np.dtype(ml_dtypes.bfloat16)
_all_model_instances: list[Any] = []   # AXCL sessions, as pyaxengine's _axclrt keeps them


class NodeArg:
    def __init__(self, name, dtype, shape):
        self.name = name
        self.dtype = dtype
        self.shape = shape


class _OrtProviderSession:
    """The base session's behaviour plus an onnxruntime session per graph file."""

    def __init__(self, path_or_bytes: Any, sess_options: Any = None, provider_options: Any = None,
                 threads: int = 1, **kwargs: Any) -> None:
        self._shape_count = 0
        self._inputs: list[list[NodeArg]] = []
        self._outputs: list[list[NodeArg]] = []
        self._ort: ort.InferenceSession | None = None
        if isinstance(path_or_bytes, (str, os.PathLike)):
            src: Any = os.fspath(path_or_bytes)
            model = onnx.load(src, load_external_data=False)
        elif isinstance(path_or_bytes, bytes):
            src = path_or_bytes
            model = onnx.load(io.BytesIO(src), load_external_data=False)
        else:
            raise TypeError(f"Unable to load model from type '{type(path_or_bytes)}'")
        types = {v.name: _DTYPES[v.type.tensor_type.elem_type] for v in [*model.graph.input, *model.graph.output]}
        meta = {p.key: p.value for p in model.metadata_props}
        if SHAPE_GROUPS_KEY in meta:
            groups = json.loads(meta[SHAPE_GROUPS_KEY])
        else:
            def static(vis):
                return [{"name": v.name, "shape": [d.dim_value for d in v.type.tensor_type.shape.dim]} for v in vis]
            groups = {"inputs": [static(model.graph.input)], "outputs": [static(model.graph.output)]}

        def args(group):
            return [NodeArg(a["name"], types[a["name"]], [int(x) for x in a["shape"]]) for a in group]
        self._inputs = [args(g) for g in groups["inputs"]]
        self._outputs = [args(g) for g in groups["outputs"]]
        self._shape_count = len(self._inputs)
        self._mask_input = meta.get(CAUSAL_MASK_KEY)
        del model
        if isinstance(sess_options, ort.SessionOptions):
            opts = sess_options
        else:
            opts = session_options(threads)
        self._ort = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])

    # -- the base session's API ----------------------------------------------------------------
    def get_inputs(self, shape_group: int = 0) -> list[NodeArg]:
        if shape_group > self._shape_count:
            raise ValueError(f"Shape group '{shape_group}' is out of range, total {self._shape_count}.")
        return self._inputs[shape_group]

    def get_outputs(self, shape_group: int = 0) -> list[NodeArg]:
        if shape_group > self._shape_count:
            raise ValueError(f"Shape group '{shape_group}' is out of range, total {self._shape_count}.")
        return self._outputs[shape_group]

    def _validate_input(self, feed: dict[str, np.ndarray]) -> None:
        missing = [a.name for a in self.get_inputs() if a.name not in feed]
        if missing:
            raise ValueError(f"Required inputs ({missing}) are missing from input feed ({feed}).")

    def _validate_output(self, output_names: list[str] | None) -> None:
        if output_names is None:
            return
        known = [o.name for o in self.get_outputs()]
        for name in output_names:
            if name not in known:
                raise ValueError(f"Output name '{name}' is not in model outputs name list.")

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray], run_options: Any = None,
            shape_group: int = 0) -> list[np.ndarray]:
        self._validate_input(input_feed)
        self._validate_output(output_names)
        if output_names is None:
            output_names = [o.name for o in self.get_outputs(shape_group)]
        if shape_group < 0 or shape_group > self._shape_count - 1:
            raise ValueError(f"Invalid shape group: {shape_group}")
        fed: dict[str, np.ndarray] = {}
        for key, a in input_feed.items():
            arg = next((x for x in self.get_inputs(shape_group) if x.name == key), None)
            if arg is None:
                continue
            assert list(arg.shape) == list(a.shape) and arg.dtype == a.dtype, (
                f"model inputs({key}) expect shape {arg.shape} and dtype {arg.dtype}, however gets input "
                f"with shape {a.shape} and dtype {a.dtype}")
            self._before_copy()
            fed[key] = a
        self._check_loaded()
        outs = self._compute(shape_group, fed)
        names = [o.name for o in self.get_outputs(shape_group)]
        picks = [output_names.index(n) for n in names]
        return [outs[i] for i in picks if names[i] in output_names]

    # -- lifetime ------------------------------------------------------------------------------
    def _unload(self) -> None:
        self._ort = None

    def _before_copy(self) -> None:
        """Called before each fed input is copied to the device."""

    def _check_loaded(self) -> None:
        if self._ort is None:
            raise RuntimeError("Failed to run model.")

    # -- onnxruntime ---------------------------------------------------------------------------
    def _compute(self, g: int, fed: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = self._ort.io_binding()
        for arg in self._inputs[g]:
            if arg.name not in fed:
                raise RuntimeError(f"input '{arg.name}' of shape group {g} was not fed: the NPU would read "
                                   f"whatever its buffer held, which the PC mirror does not reproduce")
            a = fed[arg.name]
            if arg.name == self._mask_input:
                check_causal_mask(a)
            binding.bind_ortvalue_input(arg.name, _ortvalue(np.ascontiguousarray(a)))
        outs = []
        for arg in self._outputs[g]:
            buf = np.empty(arg.shape, arg.dtype)
            binding.bind_ortvalue_output(arg.name, _ortvalue(buf))
            outs.append(buf)
        self._ort.run_with_iobinding(binding)
        return outs


class AXEngineSession(_OrtProviderSession):
    """The on-board NPU: provider_options are not read; the handle goes with the last reference."""

    def __del__(self) -> None:
        self._unload()


class AXCLRTSession(_OrtProviderSession):
    """An AXCL card: provider_options[0]["device_id"] picks it; kept in _all_model_instances."""

    def __init__(self, path_or_bytes: Any, sess_options: Any = None, provider_options: Any = None,
                 **kwargs: Any) -> None:
        self._device_index = 0
        if provider_options is not None and "device_id" in provider_options[0]:
            self._device_index = provider_options[0].get("device_id", 0)
        if self._device_index >= CARDS:
            raise RuntimeError(f"Device index {self._device_index} is out of range, total {CARDS} device.")
        self.soc_name = SOC_NAME
        super().__init__(path_or_bytes, sess_options, provider_options, **kwargs)
        _all_model_instances.append(self)

    def __del__(self) -> None:
        self._unload()
        if self in _all_model_instances:    # not listed when __init__ failed
            _all_model_instances.remove(self)

    def _check_loaded(self) -> None:
        if self._ort is None:    # pyaxengine indexes its IO handle, None once unloaded
            raise TypeError("'NoneType' object is not subscriptable")

    _before_copy = _check_loaded


def check_causal_mask(mask: np.ndarray) -> None:
    """mask [1, S, W] (additive; columns: W - S past rows, then the S new tokens) must be the
    vendor loop's: row 0 admits the first n past columns and new column 0; row r admits the same
    past columns and new columns 0..r, or nothing, for padding. Raises ValueError otherwise (the
    mirror's causal attention would compute something else than the chip)."""
    m = np.asarray(mask, dtype=np.float32)[0]
    S, W = m.shape
    admit = m == 0
    if not np.all(admit | (m <= MASK_FLOOR)):
        raise ValueError(f"mask holds values other than 0 and <= {MASK_FLOOR:g}; the PC mirror computes only "
                         "0 / masked")
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
