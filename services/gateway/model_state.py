"""Each model's state as clients see it (worker and tokenizer together), and the stack's health.

A model is `loaded` (serving), `loading` (its worker is starting or restarting: requests wait for
it, bounded), `unloaded` (no worker holds it: a request loads it, lifecycle.py) or `failed` (its
worker or its tokenizer cannot start for a reason a restart does not cure: requests get 503
`model_not_available` at once).

Health (`GET /health`, the gRPC overall status): the stack is serving (200, SERVING) when the
tokenizer answers, no model that should be loaded (a preloaded one not unloaded on purpose:
ModelInfo.required) is loading, and at least one model is loaded or can be loaded on demand. A failed model does not
take the others down: the status is then `degraded` and `failed` names it with its reason, so a
load balancer keeps sending traffic (the failed model's requests fail fast) while an operator
sees what to fix. A model that is (re)starting is a 503, as before: it will come back, and a
load balancer should wait for it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from npuflow.gateway.client import ModelInfo
from npuflow.gateway.state import GatewayState


def model_states(st: GatewayState) -> list[ModelInfo]:
    """Every configured model; a model whose tokenizer failed to load counts as failed, and one
    takes images (`vision`) when its worker and its tokenizer both say so (takes_images)."""
    tok_failed = getattr(st.tokenizer, "failed", None) or {}
    out = []
    for m in st.models.models():
        reason = tok_failed.get(m.id)
        if reason and m.status != "failed":
            m = dataclasses.replace(m, ready=False, state="failed", reason=f"tokenizer: {reason}")
        vision = takes_images(st, m)
        if vision != m.vision:
            m = dataclasses.replace(m, vision=vision)
        out.append(m)
    return out


def takes_images(st: GatewayState, m: ModelInfo) -> bool:
    """The worker (its Hello) and the tokenizer (its model list) must both handle images; until
    one of them has said anything about the model, the other's word counts alone."""
    said = []
    if m.worker_id:
        said.append(m.vision)
    tok_models = getattr(st.tokenizer, "models", None) or {}
    if m.id in tok_models:
        said.append(m.id in (getattr(st.tokenizer, "vision", None) or ()))
    return bool(said) and all(said)


def status_object(m: ModelInfo) -> dict:
    """The `status` extension of a model object: {"state"} plus "reason" when failed."""
    return {"state": m.status, "reason": m.reason} if m.reason else {"state": m.status}


@dataclass
class Health:
    tokenizer: bool
    models: list[ModelInfo]
    missing: list[str] = field(default_factory=list)    # what is starting or gone (503 until back)
    failed: dict[str, str] = field(default_factory=dict)  # model -> why it cannot start

    @property
    def serving(self) -> bool:
        return self.tokenizer and not self.missing and any(
            m.status == "loaded" or (m.status in ("unloaded", "loading") and not m.required) for m in self.models)

    @property
    def status(self) -> str:
        if not self.serving:
            return "unavailable"
        return "degraded" if self.failed else "ok"


def health(st: GatewayState) -> Health:
    tokenizer = bool(st.tokenizer.ready)
    models = model_states(st)
    h = Health(tokenizer=tokenizer, models=models)
    if not tokenizer:
        h.missing.append("tokenizer")
    for m in models:
        if m.status == "failed":
            h.failed[m.id] = m.reason
        elif m.status != "loaded" and m.required:
            h.missing.append(f"worker:{m.id}")
    return h
