"""The onnxruntime mirror behaves like pyaxengine (axengine/_session.py, _base_session.py, _axe.py,
_axclrt.py) for each provider, and the AX engine works through that API alone: shape groups
found by probing get_inputs, list shapes, release by dropping references (and unloading what
the AXCL runtime keeps listed)."""
import gc
import weakref

import ml_dtypes
import numpy as np
import pytest

from npuflow.engine import ax_ort, ax_ort_providers
from npuflow.engine.ax import AxEngine, _shape_groups
from npuflow.engine.ax_ort import InferenceSession, SessionOptions
from npuflow.engine.ax_runtime import AXCLRT, AXENGINE, AxRuntimeError, ort_factory, release_session

BF16 = np.dtype(ml_dtypes.bfloat16)
PROVIDERS = [AXENGINE, AXCLRT]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_object_structure_is_pyaxengine_s(add_graph, provider):
    opts = SessionOptions()
    s = InferenceSession(str(add_graph), opts, providers=[provider])
    inner = s._sess
    assert type(inner).__name__ == {AXENGINE: "AXEngineSession", AXCLRT: "AXCLRTSession"}[provider]
    assert s.get_providers() == provider and s.get_session_options() is opts
    assert not hasattr(s, "_shape_count") and not hasattr(s, "close")   # on the provider session only
    assert inner._shape_count == 2 and len(inner._inputs) == len(inner._outputs) == 2
    assert not hasattr(inner, "close")
    with s as same:                                         # pyaxengine's __exit__ frees nothing
        assert same is s
    assert s.run(None, {"x_1": np.zeros((1, 1, 4), BF16)})[0].shape == (1, 1, 4)
    release_session(s)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_shape_groups_out_of_range_as_pyaxengine(add_graph, provider):
    s = InferenceSession(str(add_graph), providers=[provider])
    x = np.zeros((1, 1, 4), BF16)
    arg = s.get_inputs(shape_group=1)[0]
    assert (arg.name, arg.dtype, arg.shape) == ("x_1", BF16, [1, 3, 4])
    assert type(arg.shape) is list and type(s.get_outputs()[0].shape) is list   # both providers: lists
    with pytest.raises(IndexError):                         # g == count indexes past the list
        s.get_inputs(shape_group=2)
    with pytest.raises(IndexError):
        s.get_outputs(shape_group=2)
    with pytest.raises(ValueError, match="Shape group '3' is out of range, total 2"):
        s.get_inputs(shape_group=3)
    with pytest.raises(ValueError, match="out of range"):
        s.get_outputs(shape_group=3)
    assert s.get_inputs(shape_group=-1)[0].shape == [1, 3, 4]   # a negative group indexes from the end
    with pytest.raises(IndexError):                         # output_names None: get_outputs(2) first
        s.run(None, {"x_1": x}, shape_group=2)
    with pytest.raises(ValueError, match="out of range"):
        s.run(None, {"x_1": x}, shape_group=3)
    with pytest.raises(ValueError, match="Invalid shape group: 2"):
        s.run(["y"], {"x_1": x}, shape_group=2)
    with pytest.raises(ValueError, match="Invalid shape group: -1"):
        s.run(None, {"x_1": x}, shape_group=-1)
    release_session(s)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_run_checks_as_pyaxengine(add_graph, provider):
    s = InferenceSession(str(add_graph), providers=[provider])
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4).astype(BF16)
    (y,) = s.run(None, {"x_1": x, "unrelated": x}, shape_group=1)          # other names are ignored
    assert y.dtype == BF16 and np.array_equal(y.astype(np.float32), x.astype(np.float32) + 1)
    with pytest.raises(AssertionError, match=r"model inputs\(x_1\) expect shape \[1, 1, 4\]"):
        s.run(None, {"x_1": x})
    with pytest.raises(AssertionError, match="dtype"):
        s.run(None, {"x_1": x.astype(np.float32)}, shape_group=1)          # no casting
    with pytest.raises(ValueError, match=r"Required inputs \(\['x_1'\]\) are missing"):
        s.run(None, {"x": x}, shape_group=1)
    with pytest.raises(ValueError, match="Output name 'z' is not in model outputs name list"):
        s.run(["z"], {"x_1": x}, shape_group=1)
    release_session(s)


def test_provider_choice_as_pyaxengine(add_graph, monkeypatch):
    monkeypatch.setattr(ax_ort, "_providers", [AXENGINE])                 # a board without a card
    assert InferenceSession(str(add_graph)).get_providers() == AXENGINE
    s = InferenceSession(str(add_graph), providers=[AXCLRT, (AXENGINE, {"device_id": 3})])
    assert s.get_providers() == AXENGINE and s._provider_options == {"device_id": 3}
    with pytest.raises(ValueError, match="is not available"):
        InferenceSession(str(add_graph), providers=AXCLRT)
    with pytest.raises(ValueError, match=r"\['AXCLRTExecutionProvider'\] is\(are\) not available"):
        InferenceSession(str(add_graph), providers=[AXCLRT])
    with pytest.raises(ValueError, match="No available provider"):
        InferenceSession(str(add_graph), providers=(AXENGINE,))            # a tuple is not a list
    with pytest.raises(AssertionError):
        InferenceSession(str(add_graph), providers=[1])
    with pytest.raises(TypeError):
        InferenceSession(1, providers=[AXENGINE])


def test_axcl_card_index(add_graph, monkeypatch):
    s = InferenceSession(str(add_graph), providers=[AXCLRT], provider_options=[{"device_id": 0}])
    assert s._sess._device_index == 0 and s._sess.soc_name
    with pytest.raises(RuntimeError, match="Device index 1 is out of range, total 1 device"):
        InferenceSession(str(add_graph), providers=[AXCLRT], provider_options=[{"device_id": 1}])
    s2 = InferenceSession(str(add_graph), providers=[AXENGINE], provider_options=[{"device_id": 1}])
    assert s2.get_providers() == AXENGINE                   # the on-board provider ignores them
    with pytest.raises(AxRuntimeError,
                       match=r"^add.onnx: .* on AXCLRTExecutionProvider \(RuntimeError: Device index 1"):
        ort_factory(device_id=1, provider=AXCLRT)(add_graph)
    release_session(s)


def test_release_frees_on_board_sessions_by_reference(add_graph):
    s = InferenceSession(str(add_graph), providers=[AXENGINE])
    ref, inner, ort_ref = weakref.ref(s), weakref.ref(s._sess), weakref.ref(s._sess._ort)
    release_session(s)
    assert s._sess._ort is not None                         # nothing unloaded while referenced
    del s
    assert ref() is None and inner() is None and ort_ref() is None   # __del__ came at once


def test_release_unloads_axcl_sessions_the_runtime_keeps(add_graph):
    s = InferenceSession(str(add_graph), providers=[AXCLRT])
    inner = s._sess
    ort_ref = weakref.ref(inner._ort)
    assert inner in ax_ort_providers._all_model_instances
    del s
    gc.collect()
    assert ort_ref() is not None                            # dropping references frees nothing on a card
    keep = InferenceSession(str(add_graph), providers=[AXCLRT])
    ort_ref = weakref.ref(keep._sess._ort)
    release_session(keep)
    assert ort_ref() is None
    with pytest.raises(TypeError):                           # pyaxengine: its IO handle is None then
        keep.run(None, {"x_1": np.zeros((1, 1, 4), BF16)})
    release_session(keep)                                   # again: harmless
    release_session(inner)                                  # not a public session: ignored
    inner._unload()


def test_probe_finds_the_groups_of_the_public_api(tiny_package):
    from npuflow.engine.ax_runtime import factory_for
    pkg = tiny_package
    s = factory_for(pkg.path / pkg.extra["ax"]["layer_files"][0])(pkg.path / pkg.extra["ax"]["layer_files"][0])
    asked = []
    real = s.get_inputs

    def spy(shape_group=0):
        asked.append(shape_group)
        return real(shape_group)
    s.get_inputs = spy
    assert _shape_groups(s) == s._sess._shape_count == 3 and asked == [0, 1, 2, 3]
    release_session(s)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_engine_on_each_provider_and_release(tiny_package, provider):
    eng = AxEngine(tiny_package, max_slots=2, provider=provider)
    try:
        assert (eng._groups, eng._P, eng._C, eng.vocab_size) == (3, 4, 8, 6)
        assert isinstance(eng._layers[0].get_inputs(0)[0].shape, list)
        first = eng.prefill(0, [1, 2, 3, 4, 5, 1])             # two chunks: groups 1 and 2
        assert first.shape == (6,)
        assert eng.decode([0], [2]).shape == (1, 6)
        sessions = [*eng._layers, eng._post]
        refs = [weakref.ref(x) for x in sessions]
        orts = [weakref.ref(x._sess._ort) for x in sessions]
        del sessions
    finally:
        eng.close()
    assert all(r() is None for r in refs) and all(r() is None for r in orts)


class TupleShapes:
    """A session whose NodeArgs carry tuple shapes (the engine takes lists and tuples alike)."""

    def __init__(self, path):
        self.wrapped = InferenceSession(str(path))

    def get_inputs(self, shape_group=0):
        return [ax_ort.NodeArg(a.name, a.dtype, tuple(a.shape)) for a in self.wrapped.get_inputs(shape_group)]

    def get_outputs(self, shape_group=0):
        return [ax_ort.NodeArg(a.name, a.dtype, tuple(a.shape)) for a in self.wrapped.get_outputs(shape_group)]

    def run(self, names, feed, run_options=None, shape_group=0):
        return self.wrapped.run(names, feed, run_options, shape_group)


def test_engine_takes_tuple_and_list_shapes(tiny_package):
    got = []
    for factory in (None, TupleShapes):
        eng = AxEngine(tiny_package, session_factory=factory)
        try:
            got.append((eng.prefill(0, [1, 2, 3, 4, 5]), eng.decode([0], [3])))
        finally:
            eng.close()
    assert all(np.array_equal(a, b) for a, b in zip(*got))


def test_engine_probe_with_simulated_timing(tiny_package):
    eng = AxEngine(tiny_package, simulate_timing="ax650n", provider=AXCLRT)
    try:
        assert eng._groups == 3 and eng._layers[0].wrapped.get_providers() == AXCLRT
        refs = [weakref.ref(x.wrapped._sess._ort) for x in eng._layers]
    finally:
        eng.close()
    assert all(r() is None for r in refs)
