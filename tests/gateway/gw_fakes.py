"""Fake peers of the gateway speaking the real protobuf over real ZMQ sockets.

FakeWorker binds a ROUTER like llm_worker: Hello on first contact from a peer, Heartbeat per
Ping, scripted token streams per GenerateRequest, a final ABORT event per Abort; as an embedding
model (embedding=True) one EmbedResult per EmbedRequest (fake_vector of each input).
FakeTokenizer binds a ROUTER like the tokenizer service: one token per whitespace-separated word.
Both run as tasks on the event loop of the gateway under test.
"""
from __future__ import annotations

import asyncio
import os
import uuid

import numpy as np

import zmq
import zmq.asyncio

from npuflow.transport import make_socket
from npuflow.v1 import common_pb2, tokenizer_pb2, worker_pb2

MODEL = "fake-model"  # the model id the fake worker serves
EMBED_MODEL = "fake-embed"   # the embedding model of stacks made with embed=True
EMBED_DIMS = 8
KEY = "sk-test"       # the API key of the keyed test apps

FR = common_pb2.FinishReason
IMAGE_TOKEN, IMAGE_TOKENS = 7, 4   # the fake tokenizer's image placeholder and tokens per image
REPLY = ["Hello", " world", ",", " this", " is", " a", " test", "."]


def fake_vector(ids, dimensions: int = EMBED_DIMS) -> np.ndarray:
    """The fake embedding model's vector of an input: a function of its ids, L2-normalised."""
    rng = np.random.default_rng(sum((i + 1) * (k + 7) for k, i in enumerate(ids)))
    v = rng.standard_normal(EMBED_DIMS).astype(np.float32)[:dimensions]
    return (v / np.linalg.norm(v)).astype(np.float32)


class FakeWorker:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, model: str, context_length: int = 64,
                 vision: bool = False, failed: str = "", embedding: bool = False, matryoshka: bool = True):
        self.ctx, self.endpoint, self.model = ctx, endpoint, model
        self.failed = failed          # the Hello says the model failed to load, with this reason
        self.context_length = context_length
        self.vision = vision          # the Hello says the model takes images
        self.embedding = embedding    # an embedding model (EMBED_DIMS-long vectors)
        self.matryoshka = matryoshka
        self.embed_delay = 0.0        # seconds before an EmbedResult goes out
        self.embeds: list[worker_pb2.EmbedRequest] = []
        self.worker_id = uuid.uuid4().hex
        self.reply = list(REPLY)
        self.delay = 0.001            # seconds between decode steps
        self.silent = False           # stop answering anything (a hung or dead worker)
        self.capacity = 0             # > 0: refuse (OVERLOADED) past this many sequences, as the scheduler does
        self.overloaded: list[str] = []   # request ids refused so
        self.fail_with: str | None = None   # end each generation at its first step with an INTERNAL error
        self._seqs: dict[str, int] = {}
        self.requests: list[worker_pb2.GenerateRequest] = []
        self.aborts: list[str] = []
        self.pings = 0
        self._peers: set[bytes] = set()
        self._gens: dict[str, asyncio.Task] = {}
        self.sock = make_socket(ctx, zmq.ROUTER, endpoint, bind=True)
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        self._task.cancel()
        for t in self._gens.values():
            t.cancel()
        await asyncio.gather(self._task, *self._gens.values(), return_exceptions=True)
        self.sock.close(linger=0)

    async def emit_stray(self, request_id: str) -> None:
        """Send a token event of a request the gateway never made (or already forgot)."""
        out = worker_pb2.FromWorker()
        out.events.events.add(request_id=request_id, text="?", token_ids=[1])
        for peer in list(self._peers):
            await self._send(peer, out)

    async def _send(self, peer: bytes, msg: worker_pb2.FromWorker) -> None:
        if peer not in self._peers:
            self._peers.add(peer)
            hello = worker_pb2.FromWorker()
            h = hello.hello
            h.model, h.worker_id, h.context_length, h.max_batch = self.model, self.worker_id, self.context_length, 2
            h.vocab_size, h.engine, h.pid, h.created_unix = 1000, "cpu", os.getpid(), 1700000000
            h.vision = self.vision
            h.embedding, h.embedding_dimensions = self.embedding, EMBED_DIMS if self.embedding else 0
            h.matryoshka = self.embedding and self.matryoshka
            if self.failed:
                h.state, h.state_reason = common_pb2.MODEL_STATE_FAILED, self.failed
            h.eos_token_ids.append(2)
            await self.sock.send_multipart([peer, hello.SerializeToString()])
        await self.sock.send_multipart([peer, msg.SerializeToString()])

    async def _loop(self) -> None:
        while True:
            peer, data = await self.sock.recv_multipart()
            if self.silent:
                continue
            msg = worker_pb2.ToWorker.FromString(data)
            kind = msg.WhichOneof("kind")
            if kind == "ping":
                self.pings += 1
                out = worker_pb2.FromWorker()
                out.heartbeat.worker_id = self.worker_id
                out.heartbeat.sent_unix_ms = msg.ping.sent_unix_ms
                out.heartbeat.running = len(self._gens)
                await self._send(peer, out)
            elif kind == "generate":
                g = msg.generate
                self.requests.append(g)
                held, n = sum(self._seqs.values()), max(1, g.n)
                if self.capacity and held and held + n > self.capacity:
                    self.overloaded.append(g.request_id)
                    out = worker_pb2.FromWorker()
                    for i in range(n):
                        ev = out.events.events.add(request_id=g.request_id, index=i,
                                                   finish_reason=FR.FINISH_REASON_ERROR)
                        ev.error.code = common_pb2.ERROR_CODE_OVERLOADED
                        ev.error.message = "the model's queue is full"
                    await self._send(peer, out)
                    continue
                self._seqs[g.request_id] = n
                self._gens[g.request_id] = asyncio.create_task(self._generate(peer, g))
            elif kind == "embed":
                self.embeds.append(msg.embed)
                self._gens[msg.embed.request_id] = asyncio.create_task(self._embed(peer, msg.embed))
            elif kind == "abort":
                rid = msg.abort.request_id
                self.aborts.append(rid)
                self._seqs.pop(rid, None)
                t = self._gens.pop(rid, None)
                if t is not None and any(e.request_id == rid for e in self.embeds):
                    t.cancel()      # an embed request is dropped without an answer
                elif t is not None:
                    t.cancel()
                    out = worker_pb2.FromWorker()
                    out.events.events.add(request_id=rid, finish_reason=FR.FINISH_REASON_ABORT)
                    await self._send(peer, out)

    async def _embed(self, peer: bytes, e: worker_pb2.EmbedRequest) -> None:
        await asyncio.sleep(self.embed_delay)
        dims = e.dimensions or EMBED_DIMS
        vectors = np.stack([fake_vector(list(x.ids), dims) for x in e.inputs])
        out = worker_pb2.FromWorker()
        out.embedded.request_id, out.embedded.dimensions = e.request_id, dims
        out.embedded.vectors = vectors.astype("<f4").tobytes()
        out.embedded.prompt_tokens = sum(len(x.ids) for x in e.inputs)
        self._gens.pop(e.request_id, None)
        await self._send(peer, out)

    async def _generate(self, peer: bytes, g: worker_pb2.GenerateRequest) -> None:
        n = max(1, g.n)
        limit = g.sampling.max_tokens or (self.context_length - len(g.prompt_token_ids))
        texts, counts, done = [""] * n, [0] * n, [False] * n
        step = 0
        while not all(done):
            await asyncio.sleep(self.delay)
            if self.silent:
                return
            out = worker_pb2.FromWorker()
            if self.fail_with is not None:
                for i in range(n):
                    ev = out.events.events.add(request_id=g.request_id, index=i, finish_reason=FR.FINISH_REASON_ERROR)
                    ev.error.code, ev.error.message = common_pb2.ERROR_CODE_INTERNAL, self.fail_with
                self._seqs.pop(g.request_id, None)
                self._gens.pop(g.request_id, None)
                await self._send(peer, out)
                return
            for i in range(n):
                if done[i]:
                    continue
                ev = out.events.events.add(request_id=g.request_id, index=i)
                piece = self.reply[step] if step < len(self.reply) else None
                stop = next((s for s in g.sampling.stop if piece is not None and s in texts[i] + piece), None)
                if piece is None or stop is not None:
                    ev.finish_reason = FR.FINISH_REASON_STOP
                    ev.stop_reason = stop or ""
                else:
                    texts[i] += piece
                    counts[i] += 1
                    ev.text = piece
                    ev.token_ids.append(100 + step)
                    if g.sampling.logprobs:
                        lp = ev.logprobs.add(token_id=100 + step, logprob=-0.5, token_bytes=piece.encode())
                        for k in range(g.sampling.top_logprobs):
                            lp.top.add(token_id=200 + k, logprob=-1.0 - k, token_bytes=f"alt{k}".encode())
                    if counts[i] >= limit:
                        ev.finish_reason = FR.FINISH_REASON_LENGTH
                if ev.finish_reason:
                    done[i] = True
                    ev.prompt_tokens = len(g.prompt_token_ids)
                    ev.completion_tokens = counts[i]
            step += 1
            if all(done):
                self._seqs.pop(g.request_id, None)
            await self._send(peer, out)
        self._gens.pop(g.request_id, None)


class FakeTokenizer:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, models: list[str], vision: tuple[str, ...] = ()):
        self.models = models
        self.vision = vision          # models that take images: each image is IMAGE_TOKENS tokens
        self.silent = False
        self.chats: list[tokenizer_pb2.ChatInput] = []
        self.thinks = ""              # "open": the rendered prompt opens <think>; "may": the template knows them
        self.sock = make_socket(ctx, zmq.ROUTER, endpoint, bind=True)
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close(linger=0)

    @staticmethod
    def ids(text: str) -> list[int]:
        return [10 + (sum(map(ord, w)) % 900) for w in text.split()]

    async def _loop(self) -> None:
        while True:
            peer, data = await self.sock.recv_multipart()
            if self.silent:
                continue
            req = tokenizer_pb2.TokenizerRequest.FromString(data)
            resp = tokenizer_pb2.TokenizerResponse(request_id=req.request_id)
            kind = req.WhichOneof("kind")
            if kind == "list_models":
                for m in self.models:
                    resp.models.models.add(model=m, vocab_size=1000, vision=m in self.vision)
            elif kind == "load_model":
                resp.loaded.model = req.load_model.model
                if req.load_model.model in self.models:
                    resp.loaded.vocab_size = 1000
                else:
                    resp.loaded.failed_reason = "unknown model"
            elif kind == "encode" and req.encode.model not in self.models:
                resp.error.code = common_pb2.ERROR_CODE_NOT_FOUND
                resp.error.message = f"unknown model {req.encode.model}"
            elif kind == "encode" and req.encode.WhichOneof("input") == "chat":
                self.chats.append(req.encode.chat)
                text = " ".join(f"<{m.role}> {m.content}" for m in req.encode.chat.messages) + " <assistant>"
                resp.encoded.token_ids.extend(self.ids(text))
                resp.encoded.rendered = text + ("<think>\n" if self.thinks == "open" else "")
                resp.encoded.template_thinks = bool(self.thinks)
                for m in req.encode.chat.messages:   # images after the text, IMAGE_TOKENS each
                    for p in m.parts:
                        if p.WhichOneof("part") == "image":
                            start = len(resp.encoded.token_ids)
                            resp.encoded.token_ids.extend([IMAGE_TOKEN] * IMAGE_TOKENS)
                            resp.encoded.images.add(start=start, end=start + IMAGE_TOKENS, placeholders=IMAGE_TOKENS)
            elif kind == "encode" and req.encode.WhichOneof("input") == "embed":
                em = req.encode.embed
                if em.instruction and req.encode.model != EMBED_MODEL:
                    resp.error.code = common_pb2.ERROR_CODE_INVALID_ARGUMENT
                    resp.error.message, resp.error.param = "no instruction format", "instruction"
                for t in em.texts:      # [CLS] text [SEP] as a BERT tokenizer writes it
                    text = f"Instruct: {em.instruction} Query: {t}" if em.instruction else t
                    resp.encoded.inputs.add().ids.extend([1, *self.ids(text), 2])
            elif kind == "encode":
                resp.encoded.token_ids.extend(self.ids(req.encode.text))
            elif kind == "decode":
                resp.decoded.text = " ".join(f"t{i}" for i in req.decode.token_ids)
            await self.sock.send_multipart([peer, resp.SerializeToString()])
