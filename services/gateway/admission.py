"""Admission per model: the one place that decides whether a request gets queue room.

The unit is the sequence (one choice of one prompt: a request with n choices over k prompts is
n*k sequences), as the worker counts its batch and queue. A model holds at most
`max_batch + max_queue` sequences in flight (max_batch from the worker's Hello, else the
config); a one-prompt request that alone needs more than that is let in only when the model has
nothing in flight (a many-prompt one is a 400: the worker gets one request per prompt). A request is counted from its admission until the handler is done with it, which is
after the worker was sent its Abort (or sent its last event), so the worker's count of a
gateway's sequences is never above the gateway's: the worker's own check (the same limit, in
the scheduler) never refuses a request admitted here, and a request that got its 200 or whose
gRPC stream started is never refused for queue room afterwards.

A refusal is a 429 (gRPC RESOURCE_EXHAUSTED) with `Retry-After`: the seconds until enough
sequences end to make room, from the sequences in flight and the measured time a request's
sequences hold their slots (first token to its end, however it ended; smoothed), bounded to
[1, 60].
"""
from __future__ import annotations

import math

from npuflow.gateway.errors import ApiError, bad_param

RETRY_AFTER_MIN_S = 1
RETRY_AFTER_MAX_S = 60
DEFAULT_SERVICE_S = 2.0   # a sequence's running time before one was measured


class QueueFull(ApiError):
    """429 with the seconds after which a retry has room (HTTP `Retry-After`, gRPC trailer)."""

    def __init__(self, model: str, retry_after: int):
        super().__init__(429, f"Too many requests for model '{model}' are waiting; try again in "
                              f"{retry_after} s.", type="requests", code="rate_limit_exceeded")
        self.retry_after = retry_after

    def response(self):
        resp = super().response()
        resp.headers["Retry-After"] = str(self.retry_after)
        return resp


class Ticket:
    """Queue room held by one request; `release` (or leaving the `with` block) gives it back."""

    __slots__ = ("_adm", "model", "sequences", "_held")

    def __init__(self, adm: "Admission", model: str, sequences: int):
        self._adm, self.model, self.sequences, self._held = adm, model, sequences, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._adm._give(self.model, self.sequences)

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Admission:
    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._service: dict[str, float] = {}   # model -> smoothed seconds a sequence runs

    def held(self, model: str) -> int:
        """Sequences of the model admitted and not yet released."""
        return self._held.get(model, 0)

    def take(self, model: str, sequences: int, max_batch: int, max_queue: int, requests: int = 1) -> Ticket:
        """Room for `sequences` more (sent to the worker as `requests` requests), or QueueFull.
        Never waits (no await between check and count)."""
        held = self.held(model)
        capacity = max(1, max_batch) + max(0, max_queue)
        if requests > 1 and sequences > capacity:   # the worker would refuse its later requests
            raise bad_param("prompt", f"{sequences} sequences (prompts times n) are more than model '{model}' "
                                      f"takes at a time ({capacity}); send fewer prompts per request.")
        if held and held + sequences > capacity:
            raise QueueFull(model, self.retry_after(model, held + sequences - capacity, max_batch))
        self._held[model] = held + sequences
        return Ticket(self, model, sequences)

    def _give(self, model: str, sequences: int) -> None:
        self._held[model] = max(0, self.held(model) - sequences)

    def record(self, model: str, seconds: float) -> None:
        """A sequence of `model` ran `seconds` (first token to last)."""
        if seconds <= 0:
            return
        old = self._service.get(model)
        self._service[model] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def retry_after(self, model: str, excess: int, max_batch: int) -> int:
        """Seconds until `excess` sequences ended, at max_batch of them running at a time."""
        per = self._service.get(model, DEFAULT_SERVICE_S)
        est = per * excess / max(1, max_batch)
        return int(min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, math.ceil(est))))
