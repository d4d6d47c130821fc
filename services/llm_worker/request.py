"""A validated generate request and the state of each of its choices (one KV slot each).

A Choice collects what it produced since its last event (ids, text, logprobs) and hands it out
as one TokenEvent per scheduler step; the last event carries the finish reason and usage.

Log-probabilities follow the text, not the ids: a token's entry goes out with the event that
releases the first character of its text (text held back by a possible stop string, or half a
UTF-8 character, holds its entries back too), so the entries of a stream concatenate to its text.
Tokens whose text never reaches the client (EOS, a stop token, a token that lies wholly inside
or after a matched stop string) get no entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from npuflow.v1 import common_pb2, worker_pb2

from .detok import IncrementalDetokenizer, TokenTable
from .errors import RequestError, invalid
from .grammar import GrammarVocab
from .sampling import Pick, SamplerState, SamplingConfig, resolve_sampling
from .stop import MAX_STOP_STRINGS, StopMatcher
from .vision import RequestImages, parse_images, reuse_key

MAX_CHOICES = 16


@dataclass
class Request:
    id: str
    peer: bytes
    prompt: list[int]
    limit: int                 # completion tokens at most (max_tokens or the rest of the context)
    deadline_ms: int           # 0 = none
    sampling: SamplingConfig
    choices: list["Choice"] = field(default_factory=list)
    images: RequestImages | None = None   # None: a text prompt
    key: list[int] = field(default_factory=list)  # what prefix reuse compares (see vision.reuse_key)

    def __post_init__(self) -> None:
        self.key = reuse_key(self.prompt, self.images)

    @property
    def done(self) -> bool:
        return all(c.finished for c in self.choices)

    @property
    def cancelled(self) -> bool:   # read by the encode thread between tiles
        return self.done


@dataclass(frozen=True)
class ModelLimits:
    model_id: str
    vocab_size: int
    context_length: int
    eos_token_ids: tuple[int, ...]
    sampling_defaults: Mapping[str, Any]
    grammar: GrammarVocab | None = None   # None: requests with a grammar are refused
    vision: Any | None = None             # the encoder's VisionSpec; None: requests with images are refused


def build_request(msg: worker_pb2.GenerateRequest, peer: bytes, limits: ModelLimits, table: TokenTable) -> Request:
    """Check a GenerateRequest against the model; raises RequestError with the field at fault."""
    if not msg.request_id:
        raise invalid("request_id is empty", "request_id")
    if msg.model and msg.model != limits.model_id:
        raise RequestError(common_pb2.ERROR_CODE_NOT_FOUND, f"this worker serves '{limits.model_id}', not '{msg.model}'", "model")
    prompt = list(msg.prompt_token_ids)
    if not prompt:
        raise invalid("the prompt is empty", "prompt")
    bad = next((t for t in prompt if t >= limits.vocab_size), None)
    if bad is not None:
        raise invalid(f"prompt token id {bad} is outside the vocabulary (size {limits.vocab_size})", "prompt")
    ctx, n_prompt, max_tokens = limits.context_length, len(prompt), msg.sampling.max_tokens
    if n_prompt >= ctx or n_prompt + max_tokens > ctx:
        raise RequestError(common_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
                           f"This model's maximum context length is {ctx} tokens. However, you requested "
                           f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the completion).",
                           "max_tokens" if n_prompt < ctx else "")
    n = max(1, msg.n)
    if n > MAX_CHOICES:
        raise invalid(f"n must be at most {MAX_CHOICES}", "n")
    if len([s for s in msg.sampling.stop if s]) > MAX_STOP_STRINGS:
        raise invalid(f"at most {MAX_STOP_STRINGS} stop strings", "stop")
    bad = next((t for t in msg.sampling.stop_token_ids if t >= limits.vocab_size), None)
    if bad is not None:
        raise invalid(f"stop token id {bad} is outside the vocabulary", "stop_token_ids")
    cfg = resolve_sampling(msg.sampling, limits.sampling_defaults, limits.vocab_size)
    stop_ids = set(msg.sampling.stop_token_ids)
    if not msg.sampling.ignore_eos:
        stop_ids.update(limits.eos_token_ids)
    if msg.grammar and limits.grammar is None:
        raise invalid("structured output is not available on this worker (llguidance is not installed)",
                      msg.grammar_param or "response_format")
    if msg.grammar:  # fail before queueing; each choice compiles its own matcher below
        limits.grammar.matcher(msg.grammar, msg.grammar_param or "response_format")
    images = parse_images(msg, prompt, limits.vision)
    req = Request(id=msg.request_id, peer=peer, prompt=prompt, limit=max_tokens or ctx - n_prompt,
                  deadline_ms=msg.deadline_unix_ms, sampling=cfg, images=images)
    req.choices = [Choice(req, i, table, limits.vocab_size, frozenset(stop_ids), msg.sampling.stop,
                          limits.grammar.matcher(msg.grammar, msg.grammar_param) if msg.grammar else None)
                   for i in range(n)]
    return req


class Choice:
    def __init__(self, request: Request, index: int, table: TokenTable, vocab_size: int,
                 stop_ids: frozenset[int], stops: Sequence[str], matcher=None):
        self.request = request
        self.index = index
        self.table = table
        self.matcher = matcher
        self.sampler = SamplerState(request.sampling, vocab_size, request.prompt, index, matcher)
        self.detok = IncrementalDetokenizer(table)
        self.stop = StopMatcher(stops)
        self.stop_ids = stop_ids
        self.slot: int | None = None
        self.prefilled = 0                 # prompt tokens already in the slot
        self.cached_tokens = 0             # ... of which the slot held from an earlier prompt
        self.next_token: int | None = None  # sampled, to be fed by the next decode
        self.completion = 0
        self.finished = False
        self.finish_reason = common_pb2.FINISH_REASON_UNSPECIFIED
        self.error: common_pb2.Error | None = None
        self.stop_reason = ""
        self._reported = False
        self._ids: list[int] = []
        self._text: list[str] = []
        self._logprobs: list[common_pb2.TokenLogprob] = []
        self._held_lps: list[tuple[int, common_pb2.TokenLogprob]] = []  # (start char, entry)
        self._decoded = 0    # characters the detokenizer produced
        self._released = 0   # characters handed out (after stop-string hold-back)

    @property
    def prefilling(self) -> bool:
        return self.slot is not None and self.prefilled < len(self.request.prompt)

    def _emit(self, raw: str, final: bool = False) -> str | None:
        """Pass detokenized text through the stop matcher; returns the stop string if one matched."""
        self._decoded += len(raw)
        text, hit = self.stop.push(raw)
        if hit is None and final:
            text += self.stop.flush()
        self._text.append(text)
        self._released += len(text)
        return hit

    def _release_logprobs(self, final: bool) -> None:
        """Hand out the entries whose first character went out; at the end, those of tokens with
        no text of their own too, unless a stop string cut the text before them."""
        keep = []
        for start, lp in self._held_lps:
            if start < self._released or (final and start <= self._released and self.stop_reason == ""):
                self._logprobs.append(lp)
            elif not final:
                keep.append((start, lp))
        self._held_lps = keep

    def accept(self, pick: Pick) -> None:
        """Take the sampled token; finishes the choice on a stop token/string, the end of the
        grammar or the length limit."""
        tok = pick.token
        self.completion += 1
        self._ids.append(tok)
        if self.matcher is not None and (not self.matcher.consume(tok) or self.matcher.error):
            self._grammar_dead_end()
            return
        if pick.logprob is not None and tok not in self.stop_ids:
            self._held_lps.append((self._decoded, common_pb2.TokenLogprob(
                token_id=tok, logprob=pick.logprob, token_bytes=self.table.bytes_of(tok),
                top=[common_pb2.TopLogprob(token_id=t, logprob=lp, token_bytes=self.table.bytes_of(t))
                     for t, lp in pick.top])))
        if tok in self.stop_ids:
            hit = self._emit(self.detok.flush(), final=True)
            self.finish(common_pb2.FINISH_REASON_STOP, stop_reason=hit or "")
        elif (hit := self._emit(self.detok.push(tok))) is not None:
            self.finish(common_pb2.FINISH_REASON_STOP, stop_reason=hit)
        elif self.matcher is not None and self.matcher.done:
            hit = self._emit(self.detok.flush(), final=True)
            self.finish(common_pb2.FINISH_REASON_STOP, stop_reason=hit or "")
        elif self.completion >= self.request.limit:
            hit = self._emit(self.detok.flush(), final=True)
            self.finish(common_pb2.FINISH_REASON_STOP if hit else common_pb2.FINISH_REASON_LENGTH, stop_reason=hit or "")
        else:
            self.next_token = tok
        self._release_logprobs(self.finished)

    def _grammar_dead_end(self) -> None:
        """The grammar allows no way on (a schema no value satisfies, found only while decoding):
        the request's fault, named by its field, never an answer cut short as if complete."""
        self.finish(common_pb2.FINISH_REASON_ERROR, error=common_pb2.Error(
            code=common_pb2.ERROR_CODE_INVALID_ARGUMENT, param=self.matcher.param,
            message=f"The output cannot be completed to match {self.matcher.param}: "
                    f"{self.matcher.error or 'no token is allowed'}"))

    def finish(self, reason: int, *, error: common_pb2.Error | None = None, stop_reason: str = "") -> None:
        if self.finished:
            return
        self.finished = True
        self.next_token = None
        self.finish_reason = reason
        self.error = error
        self.stop_reason = stop_reason

    def take_event(self) -> worker_pb2.TokenEvent | None:
        """What happened since the last call, or None when nothing did."""
        final = self.finished and not self._reported
        if not (self._ids or final):
            return None
        ev = worker_pb2.TokenEvent(request_id=self.request.id, index=self.index, token_ids=self._ids,
                                   text="".join(self._text), logprobs=self._logprobs)
        self._ids, self._text, self._logprobs = [], [], []
        if final:
            self._reported = True
            ev.finish_reason = self.finish_reason
            ev.prompt_tokens = len(self.request.prompt)
            ev.cached_prompt_tokens = self.cached_tokens
            ev.completion_tokens = self.completion
            ev.stop_reason = self.stop_reason
            if self.error is not None:
                ev.error.CopyFrom(self.error)
        return ev
