"""A one-layer CPU model package ("tiny") around a given tokenizer.json, for tests that start a
tokenizer or worker process on it."""
import json
import pathlib

from npuflow.models.package import write_manifest


def tiny_package(tmp_path: pathlib.Path, tokenizer_json: pathlib.Path, chat_template: str) -> pathlib.Path:
    """Writes the package in tmp_path/pkg and returns that folder."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "tokenizer.json").write_text(tokenizer_json.read_text())
    vocab = len(json.loads(tokenizer_json.read_text())["model"]["vocab"])
    write_manifest(pkg, {"id": "tiny", "architecture": "llama", "engine": "cpu",
                         "dims": {"hidden": 8, "layers": 1, "heads": 1, "kv_heads": 1, "head_dim": 8, "ffn": 8,
                                  "vocab": vocab},
                         "context_length": 256, "eos_token_ids": [2], "bos_token_id": None,
                         "chat_template": chat_template, "files": {"tokenizer": "tokenizer.json"}})
    return pkg
