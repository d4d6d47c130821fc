"""discover(models_dir): every kind of model directory, ids from the packages, made valid, duplicates skipped."""
import json
import pathlib

import pytest

from model_dirs import cpu_package, gguf_file, hf_folder, pulsar2_dir, stackflow_dir, tokenizer_json
from npuflow.models import catalog
from npuflow.models.catalog import discover, model_id_from


@pytest.fixture
def warnings(monkeypatch):
    seen = []
    monkeypatch.setattr(catalog.log, "warning", lambda msg, **kv: seen.append((msg, kv)))
    monkeypatch.setattr(catalog, "_warned", set())
    return seen


def test_every_kind_of_model_is_found(tmp_path, warnings):
    d = tmp_path / "models"
    cpu_package(d, "chat-1")                                  # d/pkg, manifest id chat-1
    pulsar2_dir(d / "qwen-ax")
    stackflow_dir(d / "sf-dir", "qwen2.5-0.5B-prefill-20e")
    hf_folder(d / "hf-ckpt")
    gguf_file(d / "coder.Q4_0.gguf")
    found = {m.id: m for m in discover(d)}
    assert list(found) == ["coder.Q4_0", "hf-ckpt", "chat-1", "qwen-ax", "qwen2.5-0.5B-prefill-20e"]  # by entry name
    assert {i: m.engine for i, m in found.items()} == {"coder.Q4_0": "cpu", "hf-ckpt": "cpu", "chat-1": "cpu",
                                                       "qwen-ax": "ax", "qwen2.5-0.5B-prefill-20e": "ax"}
    assert found["chat-1"].source == str(d / "pkg") and found["coder.Q4_0"].source == str(d / "coder.Q4_0.gguf")
    for m in found.values():
        assert m.discovered and not m.preload and m.endpoint == ""
    assert warnings == []


def test_what_is_not_a_model_is_left_alone(tmp_path, warnings):
    d = tmp_path / "models"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    (d / ".hidden.gguf").write_bytes(b"GGUF")
    (d / "unfinished").mkdir()                                # a conversion that did not finish: no manifest
    (d / "unfinished" / "model.onnx").write_bytes(b"x")
    (d / "config-only").mkdir()                               # config.json without weights
    (d / "config-only" / "config.json").write_text("{}")
    tokenizer_json(d / "just-a-tokenizer")
    (d / "models").mkdir()                                    # StackFlow's data/models: mode jsons only
    (d / "models" / "mode_x.json").write_text(json.dumps({"mode": "x"}))
    assert discover(d) == []
    assert discover(tmp_path / "nowhere") == [] and warnings[0][0] == "cannot list the models directory"


def test_ids_are_made_valid(tmp_path, warnings):
    d = tmp_path / "models"
    gguf_file(d / "My Model (v2).gguf")
    (d / "日本語.gguf").write_bytes((d / "My Model (v2).gguf").read_bytes())
    assert [m.id for m in discover(d)] == ["My-Model-v2"]
    assert warnings[0][0] == "skipping a model whose name gives no valid id"


@pytest.mark.parametrize("name,expected", [
    ("qwen2.5:0.5b", "qwen2.5:0.5b"), ("a b  c", "a-b-c"), ("--x--", "x"), ("._x", "x"), ("(((", ""),
    ("x" * 200, "x" * 128), ("Ünïcode", "Unicode"), ("日本語-7b", "7b"),
])
def test_model_id_from(name, expected):
    assert model_id_from(name) == expected


def test_a_duplicate_id_is_skipped_with_one_warning(tmp_path, warnings):
    d = tmp_path / "models"
    gguf_file(d / "tiny.gguf")
    cpu_package(d / "sub")                                    # d/sub/pkg: not looked at (one level only)
    cpu_package(d)                                            # d/pkg, manifest id "tiny": first by name
    found = discover(d)
    assert [(m.id, m.source) for m in found] == [("tiny", str(d / "pkg"))]
    assert [w[0] for w in warnings] == ["skipping a model whose id is taken by another entry"]
    assert warnings[0][1]["path"] == str(d / "tiny.gguf")
    discover(d)
    assert len(warnings) == 1                                 # rescans do not repeat it


def test_a_broken_manifest_is_skipped_with_a_warning(tmp_path, warnings):
    d = tmp_path / "models"
    (d / "bad").mkdir(parents=True)
    (d / "bad" / "manifest.json").write_text("{not json")
    gguf_file(d / "ok.gguf")
    assert [m.id for m in discover(d)] == ["ok"]
    assert warnings[0][0] == "skipping an entry of the models directory" and warnings[0][1]["path"] == str(d / "bad")


def test_discovery_reads_no_weights(tmp_path, monkeypatch):
    """Only names, small json files and directory listings: a big weight file is never opened."""
    d = tmp_path / "models"
    cpu_package(d)
    stackflow_dir(d / "sf", "sf")
    big = d / "big.gguf"
    big.write_bytes(b"GGUF")
    opened = []
    real_open, real_path_open = open, pathlib.Path.open

    def spy(file, *a, **kw):
        opened.append(str(file))
        return real_open(file, *a, **kw)

    def path_spy(self, *a, **kw):
        opened.append(str(self))
        return real_path_open(self, *a, **kw)

    monkeypatch.setattr("builtins.open", spy)
    monkeypatch.setattr(pathlib.Path, "open", path_spy)
    assert sorted(m.id for m in discover(d)) == ["big", "sf", "tiny"]
    assert opened and all(p.endswith(".json") for p in opened), opened
