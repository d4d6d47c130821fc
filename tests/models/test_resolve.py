"""resolve_model: conversion into the cache once, reuse, rebuild of corrupt or unfinished entries,
one conversion when several processes resolve at once."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import tinymodels
from npuflow.models.cache import verify_package
from npuflow.models.package import PackageError
from npuflow.models.resolve import resolve_model


@pytest.fixture
def gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    tinymodels.write_gguf(path, "qwen2", "Q4_0")
    return path


def _entries(cache):
    return sorted(p.name for p in (cache / "models").iterdir())


def test_converts_once_then_reuses(gguf, tmp_path):
    cache = tmp_path / "cache"
    pkg = resolve_model(str(gguf), cache, "tiny-a")
    assert pkg.id == "tiny-a" and pkg.path.parent == cache / "models"
    created = json.loads((pkg.path / "manifest.json").read_text())["created"]
    again = resolve_model(str(gguf), cache, "tiny-a")
    assert again.path == pkg.path
    assert json.loads((pkg.path / "manifest.json").read_text())["created"] == created
    assert len(_entries(cache)) == 1
    assert resolve_model(str(pkg.path), cache, "other").id == "other"     # a package folder is used in place


def test_hf_folder_source(tmp_path):
    tinymodels.write_hf(tmp_path / "ckpt", "qwen3")
    pkg = resolve_model(str(tmp_path / "ckpt"), tmp_path / "cache", "q3")
    assert pkg.architecture == "qwen3" and pkg.id == "q3"


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "missing_file"])
def test_damaged_cache_is_rebuilt(gguf, tmp_path, damage):
    cache = tmp_path / "cache"
    pkg = resolve_model(str(gguf), cache, "tiny")
    data = pkg.path / "model.onnx.data"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:-100])
    elif damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "no_manifest":
        (pkg.path / "manifest.json").unlink()
    else:
        (pkg.path / "tokenizer.json").unlink()
    if damage != "no_manifest":
        with pytest.raises(PackageError):
            verify_package(pkg.path)
    rebuilt = resolve_model(str(gguf), cache, "tiny")
    assert verify_package(rebuilt.path).path == pkg.path


def test_unknown_source(tmp_path):
    with pytest.raises(PackageError, match="not 'default'"):
        resolve_model(str(tmp_path / "nothing"), tmp_path / "cache", "x")


def test_concurrent_resolvers_convert_once(gguf, tmp_path):
    cache = tmp_path / "cache"
    code = textwrap.dedent(f"""
        from npuflow.logs import setup_logging
        setup_logging("info")
        from npuflow.models.resolve import resolve_model
        print(resolve_model({str(gguf)!r}, {str(cache)!r}, "tiny").path)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ}) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert len({o[0].strip() for o in outs}) == 1
    logs = "".join(o[1] for o in outs)
    assert logs.count("convert done") == 1
    assert logs.count("using cached model") == 2


def test_int8_embedding_source_gets_its_own_entry(tmp_path, gguf):
    """A model's `int8` setting: an embedding checkpoint converts with int8 projections into an
    entry of its own beside the float32 one; on a source that is not converted it is an error."""
    import pathlib

    from npuflow.config import load_settings
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))
    import embed_ckpt
    src = embed_ckpt.write_bert(tmp_path / "bert")
    cache = tmp_path / "cache"
    exact, fast = resolve_model(str(src), cache, "b"), resolve_model(str(src), cache, "b", int8=True)
    assert exact.path != fast.path and fast.path.name.endswith("-int8") and len(_entries(cache)) == 2
    assert exact.extra["embedding"]["weights"] == "float32" and fast.extra["embedding"]["weights"] == "int8"
    assert resolve_model(str(src), cache, "b", int8=True).path == fast.path
    with pytest.raises(PackageError, match="int8 applies to an embedding model's"):
        resolve_model(str(exact.path), cache, "b", int8=True)
    with pytest.raises(PackageError, match="int8 applies"):
        resolve_model("default", cache, "b", int8=True)
    from npuflow.convert import ConvertError
    with pytest.raises(ConvertError, match="for embedding models"):
        resolve_model(str(gguf), cache, "lm", int8=True)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[models]]\nid = "b"\nsource = "{src}"\nint8 = true\n')
    assert load_settings(str(cfg)).model("b").int8 is True
