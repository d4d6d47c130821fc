"""The worker gives freed heap back once a burst of work is over, not on every idle loop."""
from npuflow import memory


def test_idle_trim_once_per_burst(monkeypatch):
    calls = []
    t = memory.IdleTrim()
    t._trim = lambda pad: calls.append(pad)
    t(False)
    assert calls == []                 # idle from the start: nothing to give back
    t(True)
    t(True)
    t(False)
    t(False)
    assert calls == [0]                # once when the work stopped
    t(True)
    t(False)
    assert calls == [0]                # too soon after the last one: later
    t._last -= memory.MIN_INTERVAL_S
    t(False)
    assert calls == [0, 0]


def test_limit_arenas_is_harmless():
    memory.limit_arenas(2)
    assert memory._malloc_trim() is not None
