"""Measurements that are the same in every run of a model, computed once and kept on disk.

The base model's answers to a shipped probe set, and its NLL on the neutral text, depend on the model and
the text alone: every run of that model measured them again before training (on the default model, 84
probes and a page of prose). They are kept under BEACON_CACHE/measures/, one JSON file each, keyed by what
decides them: the model as loaded (id, source, quantisation, dtype, device kind, the weights' files), the
library versions that compute them, and the exact text measured. A changed file, model or library is a new
key; a file that cannot be read is measured again.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from beacon.model.models import cache_dir

VERSION = 1   # of what a record holds: bump it when the measurement itself changes


def _weights(model_id: str) -> list:
    """Name, size and mtime of a local model folder's files (a checkpoint rewritten in place is a new model)."""
    path = Path(model_id)
    if not path.is_dir():
        return []
    return sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in path.iterdir() if f.is_file())


def key(info, kind: str, payload) -> str:
    """A file name for `kind` ("probes", "neutral") of `payload` (what is measured) on the model `info` describes."""
    import torch
    import transformers

    ident = {"v": VERSION, "kind": kind, "model": info.model, "source": info.source, "quant": info.quantization,
             "dtype": info.dtype, "device": info.device.split(":")[0], "weights": _weights(info.model),
             "torch": torch.__version__, "transformers": transformers.__version__, "payload": payload}
    return f"{kind}-{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]}.json"


def _path(name: str) -> Path:
    return cache_dir() / "measures" / name


def load(name: str):
    try:
        return json.loads(_path(name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save(name: str, value) -> None:
    """Written whole or not at all; a cache that cannot be written is only a slower next run."""
    path = _path(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.partial")
        tmp.write_text(json.dumps(value), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass
