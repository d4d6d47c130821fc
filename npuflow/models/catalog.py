"""The models found in server.models_dir, without a [[models]] entry each.

`discover(models_dir)` looks at every entry of the directory (not below it):
- a folder with manifest.json (an npuflow package): id and engine from the manifest;
- an AX folder (pulsar2 output, `npuflow convert --layout ax`, a StackFlow model directory;
  ax_package.is_ax_dir) with graph files in it: id = the <id> of its mode_<id>.json, else the
  folder name; engine "ax";
- a Hugging Face checkpoint folder (config.json and *.safetensors): id = the folder name, engine
  "cpu", converted by its worker on first load;
- a *.gguf file: id = the file name without .gguf, engine "cpu", converted on first load.
Anything else (hidden entries, unfinished conversions, other files) is not a model. Ids are made
valid (ASCII letters, digits and . _ : -; other characters become "-"); an id found twice is
served from the first entry by name, the others are skipped with a warning (once per process).

The listing runs on every GET /v1/models, so it only lists directories and reads small json
files: nothing is hashed, converted or loaded here.
"""
from __future__ import annotations

import json
import pathlib
import re
import unicodedata

from ..config import ENGINES, MODEL_ID_RE, ModelSettings
from ..logs import get_logger
from .ax_package import _mode_json, is_ax_dir
from .package import MANIFEST, PackageError

log = get_logger("models")

_BAD = re.compile(r"[^A-Za-z0-9._:-]+")
_AX_GRAPHS = ("*.axmodel", "*_together.onnx")
_warned: set[tuple[str, str]] = set()


def discover(models_dir: str | pathlib.Path) -> list[ModelSettings]:
    """The models in models_dir, by entry name; endpoint left "" (config.py formats it)."""
    root = pathlib.Path(models_dir).expanduser()
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as e:
        _warn_once(root, "", "cannot list the models directory", error=str(e))
        return []
    found: dict[str, ModelSettings] = {}
    for path in entries:
        if path.name.startswith("."):
            continue
        try:
            kind = _identify(path)
        except (OSError, ValueError, PackageError) as e:     # unreadable entry, bad json: not a model
            _warn_once(path, "", "skipping an entry of the models directory", error=f"{type(e).__name__}: {e}")
            continue
        if kind is None:
            continue
        raw_id, engine = kind
        model_id = model_id_from(raw_id)
        if not model_id:
            _warn_once(path, raw_id, "skipping a model whose name gives no valid id", name=raw_id)
            continue
        if model_id in found:
            _warn_once(path, model_id, "skipping a model whose id is taken by another entry", model=model_id,
                       served=found[model_id].source)
            continue
        found[model_id] = ModelSettings(id=model_id, source=str(path), engine=engine, preload=False, discovered=True)
    return list(found.values())


def model_id_from(name: str) -> str:
    """A valid model id from a package's name: accents dropped ("é" -> "e"), runs of other
    characters become "-" (none at either end), at most 128 characters; "" when nothing is left."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    out = _BAD.sub("-", ascii_name).strip("-").lstrip("._:")[:128]
    return out if MODEL_ID_RE.match(out) else ""


def _identify(path: pathlib.Path) -> tuple[str, str] | None:
    """(id as the package names it, engine) of a model entry, None when it is not one."""
    if path.is_file():
        return (path.name[:-5], "cpu") if path.name.lower().endswith(".gguf") else None
    if not path.is_dir():
        return None
    mf = path / MANIFEST
    if mf.is_file():
        m = json.loads(mf.read_text(encoding="utf-8"))
        if not isinstance(m, dict) or not m.get("id") or str(m.get("engine") or "cpu") not in ENGINES:
            raise ValueError(f"{mf}: no id, or an engine other than {' / '.join(ENGINES)}")
        return str(m["id"]), str(m.get("engine") or "cpu")
    if is_ax_dir(path) and _has_ax_graphs(path):
        mode = _mode_json(path)
        return (mode.stem[len("mode_"):] if mode is not None else path.name), "ax"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path.name, "cpu"
    return None


def _has_ax_graphs(path: pathlib.Path) -> bool:
    """Graph files, or a config.json naming them: a folder of mode_*.json files alone (StackFlow's
    data/models/) is not a model."""
    if any(next(path.glob(p), None) for p in _AX_GRAPHS):
        return True
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and bool(cfg.get("template_filename_axmodel"))


def _warn_once(path: pathlib.Path, key: str, msg: str, **kv) -> None:
    if (str(path), key) not in _warned:
        _warned.add((str(path), key))
        log.warning(msg, path=str(path), **kv)
