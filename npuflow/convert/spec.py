"""What a converter source (GGUF file, HF checkpoint) hands to the graph builder."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .weights import Linear

ARCHITECTURES = ("llama", "qwen2", "qwen3")


class ConvertError(Exception):
    """The source cannot be converted; the message is one line and names the cause."""


@dataclass
class LayerWeights:
    attn_norm: np.ndarray
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    ffn_norm: np.ndarray
    gate: Linear
    up: Linear
    down: Linear
    q_norm: np.ndarray | None = None    # qwen3: RMSNorm over each head, [head_dim]
    k_norm: np.ndarray | None = None


@dataclass
class ModelSpec:
    architecture: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    context_length: int
    rms_eps: float
    rope_theta: float
    rotary_interleaved: bool           # GGUF llama: Q/K permuted for pairwise (0,1),(2,3) rotation
    embedding: Callable[[], Linear]    # [vocab, hidden]
    output: Callable[[], Linear]       # [vocab, hidden]; the embedding again when tied
    final_norm: Callable[[], np.ndarray]
    layer: Callable[[int], LayerWeights]
    tokenizer_json: str
    eos_token_ids: list[int]
    bos_token_id: int | None
    chat_template: str
    name: str = ""
    tied: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def dims(self) -> dict[str, int]:
        return {"hidden": self.hidden, "layers": self.layers, "heads": self.heads,
                "kv_heads": self.kv_heads, "head_dim": self.head_dim, "ffn": self.ffn, "vocab": self.vocab}

    def layers_iter(self) -> Iterator[tuple[int, LayerWeights]]:
        for i in range(self.layers):
            yield i, self.layer(i)
