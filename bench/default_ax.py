"""The default model exported in the AX layout, once per (prefill, KV) shape, into the cache (for
the benchmark scripts; re-exported when the exporter's graph format changed)."""
from __future__ import annotations

import json
import pathlib


def export_default(cache: pathlib.Path, prefill: int, kv: int) -> pathlib.Path:
    from npuflow.convert import convert
    from npuflow.convert.ax_export import GRAPH_FORMAT
    from npuflow.models.cache import file_lock
    from npuflow.models.resolve import DEFAULT_MODEL_ID, resolve_model
    cpu = resolve_model("default", cache, DEFAULT_MODEL_ID)
    out = cache / "ax" / f"{DEFAULT_MODEL_ID}-p{prefill}-c{kv}"
    with file_lock(cache / "locks" / f"{out.name}.lock"):
        config = out / "config.json"
        if not config.is_file() or json.loads(config.read_text()).get("npuflow_graph_format") != GRAPH_FORMAT:
            convert(cpu.extra["source"]["path"], out, model_id=DEFAULT_MODEL_ID, layout="ax",
                    prefill_len=prefill, kv_cache_len=kv, overwrite=True)
    return out
