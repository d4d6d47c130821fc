"""Simulated NPU timing: make each graph run take as long as it does on a board.

Figures Axera publishes: one decoder layer of a 32-layer 1.8B model decodes in 1.595 ms and
its post graph (final norm + lm_head) in 12.665 ms on AX650N; 6.443 ms / 40.215 ms on AX630C.
Prefill per layer and token is derived from published time to first token of Qwen2.5-0.5B
(24 layers): AX650N 124 ms for a 128-token chunk, AX630C 1126 ms for a 256-token chunk (the post
graph's share left in, so these err on the slow side). A model's time per token is then its own
layer count times the per-layer figure plus one post run.

A `TimedSession` wraps any session (named in its `wrapped`): each run waits until the profile's
time for that graph and shape group has passed (when the run itself was faster), and adds the
run's wall time to `clock.device_s`, so a caller can tell NPU time from its own overhead. On a PC
the mirror's own compute happens inside that window (on the CPU, where a board's NPU would not
compete with the worker); bench/ax_overhead.py replays recorded outputs instead to isolate the
worker's cost.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


SPIN_S = 3e-4


@dataclass(frozen=True)
class TimingProfile:
    chip: str
    layer_decode_s: float         # one layer graph, shape group 0
    post_s: float                 # the post graph
    layer_prefill_token_s: float  # one layer graph, per token of a prefill chunk


PROFILES = {
    "ax650n": TimingProfile("ax650n", 1.595e-3, 12.665e-3, 124e-3 / 24 / 128),
    "ax630c": TimingProfile("ax630c", 6.443e-3, 40.215e-3, 1126e-3 / 24 / 256),
}
PROFILES["ax650"] = PROFILES["ax8850"] = PROFILES["ax650n"]
PROFILES["ax620e"] = PROFILES["ax630c"]


def profile(name: str) -> TimingProfile:
    try:
        return PROFILES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown simulate_timing '{name}' (one of {', '.join(sorted(PROFILES))})") from None


class DeviceClock:
    """Wall time spent inside graph runs (simulated or real NPU time)."""

    def __init__(self) -> None:
        self.device_s = 0.0
        self.runs = 0


class TimedSession:
    def __init__(self, sess: Any, prof: TimingProfile, *, post: bool, clock: DeviceClock, simulate: bool = True):
        self.wrapped = sess
        self._prof = prof
        self._post = post
        self._clock = clock
        self._simulate = simulate

    def get_inputs(self, shape_group: int = 0):
        return self.wrapped.get_inputs(shape_group=shape_group)

    def get_outputs(self, shape_group: int = 0):
        return self.wrapped.get_outputs(shape_group=shape_group)

    def target_s(self, shape_group: int) -> float:
        if self._post:
            return self._prof.post_s
        if shape_group == 0:
            return self._prof.layer_decode_s
        tokens = self.wrapped.get_inputs(shape_group=shape_group)
        seq = next((a.shape[1] for a in tokens if len(a.shape) == 3 and a.name.startswith("input")), 1)
        return self._prof.layer_prefill_token_s * seq

    def run(self, output_names, input_feed, run_options=None, shape_group: int = 0):
        t0 = time.perf_counter()
        out = self.wrapped.run(output_names, input_feed, run_options, shape_group=shape_group)
        if self._simulate:
            _wait_until(t0 + self.target_s(shape_group))
        self._clock.device_s += time.perf_counter() - t0
        self._clock.runs += 1
        return out


def _wait_until(deadline: float) -> None:
    """Sleep, then spin the last SPIN_S: time.sleep overshoots by ~0.1 ms, which over 30+ graph
    runs per token would add several ms to the simulated NPU time."""
    left = deadline - time.perf_counter()
    if left > SPIN_S:
        time.sleep(left - SPIN_S)
    while time.perf_counter() < deadline:
        pass
