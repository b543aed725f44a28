"""Atomic writes: a crash or a kill never leaves a half-written checkpoint or model folder behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A training checkpoint that is incomplete, corrupt or not one of ours."""


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write nested training state (tensors, numbers, strings, lists, dicts) as ``path.safetensors`` +
    ``path.json``: no pickle, so loading a checkpoint someone else wrote can never run code.

    Tensors go to the safetensors file, everything else to JSON with ``{"__tensor__": key}`` in their
    place; dicts with int keys (an optimizer's per-parameter state) are marked to come back as ints.
    The JSON, written last, records the tensor file's sha256, so a kill between the two writes leaves a
    pair that :func:`load_state` refuses rather than a silent mix of two steps.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = value.detach().cpu().clone().contiguous()
            return {"__tensor__": key}
        if isinstance(value, dict):
            if value and all(isinstance(k, int) for k in value):
                return {"__int_keys__": {str(k): encode(v) for k, v in value.items()}}
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot checkpoint a {type(value).__name__}; store tensors, numbers, strings, lists, dicts")

    body = encode(state)
    weights = path.with_suffix(".safetensors")
    weights.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=weights.parent, prefix=f".{weights.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        digest = _sha256(Path(tmp))
        os.replace(tmp, weights)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(path.with_suffix(".json"), {"format": "spatial_interp.train_state/1",
                                                  "tensors_sha256": digest, "state": body})


def load_state(path: Path) -> dict[str, Any]:
    """Read what :func:`save_state` wrote (refusing an incomplete or altered pair)."""
    from safetensors.torch import load_file

    meta_path, weights = path.with_suffix(".json"), path.with_suffix(".safetensors")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != "spatial_interp.train_state/1":
            raise CheckpointError(f"unknown format {meta.get('format')!r}")
        if _sha256(weights) != meta["tensors_sha256"]:
            raise CheckpointError(f"{weights.name} does not match the checksum in {meta_path.name}")
        tensors = load_file(weights)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{meta_path} is not a readable training checkpoint ({type(error).__name__}: "
                              f"{error}); delete it or pass --no-resume to start afresh") from error

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__tensor__"}:
                return tensors[value["__tensor__"]]
            if set(value) == {"__int_keys__"}:
                return {int(k): decode(v) for k, v in value["__int_keys__"].items()}
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return decode(meta["state"])


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_pretrained_atomic(
    model: torch.nn.Module, processor: Any, folder: Path, extra_files: dict[str, str] | None = None
) -> None:
    """Write a loadable checkpoint folder (safetensors, config, processor, tokenizer) in one swap.

    Everything goes to a sibling temporary folder first; the old folder (if any) is moved aside and
    removed only after the new one is in place, so readers see either the old or the new folder.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
