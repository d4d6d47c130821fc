"""Model directories of each kind models_dir holds, small and fast to write: npuflow packages with
files of chosen sizes, pulsar2 (the tiny AX stand-in) and StackFlow directories, HF checkpoint
folders and GGUF files (tests/convert/tinymodels)."""
from __future__ import annotations

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))           # tests/: tiny_package, bpe_tokenizer
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "ax"))    # ax_tiny

from npuflow.models.package import write_manifest  # noqa: E402
from tiny_package import tiny_package  # noqa: E402

DIMS = {"hidden": 64, "layers": 3, "heads": 4, "kv_heads": 2, "head_dim": 16, "ffn": 128, "vocab": 100}


def tokenizer_json(folder: pathlib.Path) -> pathlib.Path:
    """A minimal tokenizer.json (what tiny_package reads of it: the vocabulary)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    path.write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1, "</s>": 2}}}))
    return path


def cpu_package(root: pathlib.Path, model_id: str = "tiny") -> pathlib.Path:
    """tests/tiny_package's package (manifest and tokenizer only) in root/pkg."""
    root.mkdir(parents=True, exist_ok=True)
    pkg = tiny_package(root, tokenizer_json(root / ".tok"), "")
    if model_id != "tiny":
        m = json.loads((pkg / "manifest.json").read_text())
        write_manifest(pkg, {**{k: v for k, v in m.items() if k != "format"}, "id": model_id})
    return pkg


def sized_package(folder: pathlib.Path, model_id: str, sizes: dict[str, int], *, context_length: int = 1024,
                  dims: dict | None = None) -> pathlib.Path:
    """An npuflow package whose files (manifest key -> bytes) have the given sizes."""
    folder.mkdir(parents=True)
    files = {}
    for key, n in sizes.items():
        name = key.replace("_data", ".data") + (".npy" if key.startswith("embedding.") else ".bin")
        (folder / name).write_bytes(b"\0" * n)
        files[key] = name
    write_manifest(folder, {"id": model_id, "architecture": "llama", "engine": "cpu", "dims": dims or DIMS,
                            "context_length": context_length, "eos_token_ids": [2], "bos_token_id": None,
                            "chat_template": "", "files": files})
    return folder


def pulsar2_dir(folder: pathlib.Path) -> pathlib.Path:
    """The tiny AX stand-in (two .onnx layer graphs, post graph, bf16 embeddings; tests/ax/ax_tiny)
    with the ax-llm keys that `npuflow convert --layout ax` writes in its config.json."""
    from ax_tiny import CFG, LAYERS, P, write_tiny
    write_tiny(folder)
    (folder / "config.json").write_text(json.dumps({**CFG, "template_filename_axmodel": f"qwen2_p{P}_l%d_together.onnx",
                                                    "axmodel_num": LAYERS, "filename_post_axmodel": "qwen2_post.onnx"}))
    return folder


def stackflow_dir(folder: pathlib.Path, mode_id: str, *, cmm_kb: int | None = 1000, graph_bytes: int = 2048,
                  vision_bytes: int = 0) -> pathlib.Path:
    """A StackFlow model directory: .axmodel files (zeros of the given size), the embedding table,
    tokenizer.json, config.json and mode_<id>.json (cmm_size = cmm_kb, left out when None)."""
    folder.mkdir(parents=True)
    for i in range(2):
        (folder / f"qwen_p128_l{i}_together.axmodel").write_bytes(b"\0" * graph_bytes)
    (folder / "qwen_post.axmodel").write_bytes(b"\0" * graph_bytes)
    (folder / "model.embed_tokens.weight.bfloat16.bin").write_bytes(b"\0" * 64)
    if vision_bytes:
        (folder / "qwen_vit.axmodel").write_bytes(b"\0" * vision_bytes)
    tokenizer_json(folder)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "vocab_size": 100, "eos_token_id": 2, "max_position_embeddings": 4096,
        **({"vision": {"family": "test"}} if vision_bytes else {})}))
    mode = {"mode": mode_id, "type": "llm", "mode_param": {
        "tokens_embed_num": 100, "tokens_embed_size": 64, "max_token_len": 1023, "kv_cache_len": 512,
        "template_filename_axmodel": "qwen_p128_l%d_together.axmodel", "axmodel_num": 2,
        "filename_post_axmodel": "qwen_post.axmodel"}}
    if cmm_kb is not None:
        mode["cmm_size"] = cmm_kb
    (folder / f"mode_{mode_id}.json").write_text(json.dumps(mode))
    return folder


def hf_folder(folder: pathlib.Path, arch: str = "qwen3") -> pathlib.Path:
    import tinymodels
    tinymodels.write_hf(folder, arch)
    return folder


def gguf_file(path: pathlib.Path, arch: str = "llama", qtype: str = "Q4_0",
              embed_qtype: str | None = None) -> pathlib.Path:
    import tinymodels
    path.parent.mkdir(parents=True, exist_ok=True)
    tinymodels.write_gguf(path, arch, qtype, embed_qtype)
    return path
