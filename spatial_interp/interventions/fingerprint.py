"""Content keys: JSON data equal for two inputs exactly when they would give the same numbers.

A resumable computation (``sweep(..., out=)``) stores the key of everything that determines its
numbers (pairs' pixels and prompts, region cells, metric and ablation parameters, weights) and
refuses to resume when it differs, so a re-run never returns another run's numbers under new labels.
Keys are the same in every process (no memory addresses, no hash-seed dependent orders).

Example:
    >>> from spatial_interp.geometry import Grid, Region
    >>> from spatial_interp.interventions.fingerprint import region_key
    >>> region_key(Region.columns(Grid(2, 2), 0, 1)) == region_key(Region.cells(Grid(2, 2), [(0, 0), (1, 0)]))
    True
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..geometry import Grid, Region
from ..models.vlm import VLM
from ..site import Site
from .examples import Example, PatchPair, RegionSpec, Swap, as_pair

# --- content keys ----------------------------------------------------------------------------------
# A key is JSON data that is equal for two values exactly when they would give the same numbers, as
# far as that can be told without running them, and that is the same in every process (no memory
# addresses, no hash-seed dependent orders), so a sweep resumes after a restart.

_MAX_DEPTH = 6
_FOREIGN_PACKAGES = frozenset({"transformers", "tokenizers", "torch", "nnsight", "sentencepiece", "tiktoken"})
"""Objects from these packages (tokenizers, processors, modules) are skipped inside metrics and
closures: they are part of the model, which is keyed on its own."""

WEIGHTS_HASH_LIMIT = 50_000_000
"""Models with at most this many parameter values get their weights hashed into the fingerprint (a
second or less); larger ones are keyed by name, revision, source and dtype only."""

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


def _stable_repr(value: Any) -> str:
    """``repr`` without memory addresses; long ones are hashed."""
    text = _ADDRESS.sub("", repr(value))
    return text if len(text) <= 200 else "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def bytes_digest(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, (bytes, memoryview, np.ndarray)) else str(part).encode())
        digest.update(b"|")
    return digest.hexdigest()[:32]


def image_digest(image: Image.Image) -> str:
    """sha256 of an image's mode, size, pixels (and palette)."""
    palette = bytes(image.getpalette() or []) if image.mode in ("P", "PA") else b""
    return bytes_digest(image.mode, image.size, np.ascontiguousarray(np.asarray(image)), palette)


def _array_digest(array: np.ndarray) -> dict:
    if array.dtype.hasobject:
        return {"array": _stable_repr(array.tolist()), "shape": list(array.shape)}
    digest = bytes_digest(array.dtype.str, array.shape, np.ascontiguousarray(array))
    return {"array": digest, "shape": list(array.shape)}


def _tensor_digest(tensor: torch.Tensor) -> dict:
    tensor = tensor.detach()
    if tensor.is_meta:
        return {"tensor": "meta", "dtype": str(tensor.dtype), "shape": list(tensor.shape)}
    raw = tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return {"tensor": bytes_digest(str(tensor.dtype), tuple(tensor.shape), raw), "shape": list(tensor.shape)}


def _code_digest(code: types.CodeType) -> str:
    """Bytecode, names and constants (nested functions included): a body edit changes it."""
    consts = []
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            consts.append(_code_digest(const))
        elif isinstance(const, frozenset):  # its repr order follows the string hash seed
            consts.append(repr(sorted(map(repr, const))))
        else:
            consts.append(repr(const))
    return bytes_digest(code.co_code, code.co_names, consts)


def _is_foreign(value: Any) -> bool:
    return type(value).__module__.split(".")[0] in _FOREIGN_PACKAGES and not isinstance(value, torch.Tensor)


def _is_cache(container: Any) -> bool:
    """An empty mutable container, or one holding rendered data (images, arrays) or model parts.

    Such a container in a closure or attribute is state a function fills as it runs (e.g.
    ``paper_ablation``'s rendered reference images), not a parameter: keying its contents would
    change the key between the first run and a resume.
    """
    if not container:
        return True
    values = container.values() if isinstance(container, dict) else container
    return any(isinstance(v, (Image.Image, np.ndarray, torch.Tensor)) or _is_foreign(v) for v in values)


def _attributes(value: Any) -> dict[str, Any] | None:
    if hasattr(value, "__dict__"):
        return dict(vars(value))
    slots = [name for cls in type(value).__mro__ for name in getattr(cls, "__slots__", ())]
    return {name: getattr(value, name) for name in slots if hasattr(value, name)} if slots else None


def content_key(value: Any, depth: int = 0) -> Any:
    """A JSON key for ``value`` built from its contents (see the module docstring).

    * plain data (numbers, strings, tuples, lists, dicts), sites, regions (grid + cells), swaps
      (both sides + alignment): themselves;
    * images, arrays, tensors: sha256 of their bytes;
    * functions: module, qualname, a digest of their bytecode and constants, their defaults and the
      keys of the values they close over; ``functools.partial``: its function, args and keywords;
      bound methods: the function and the key of ``self``;
    * other objects (metrics, ablations): class plus the keys of their public attributes, skipping
      tokenizers, processors and modules (part of the model, keyed separately).

    What cannot be keyed by content is keyed by less: an empty or data-holding mutable container in
    a closure (a cache) by its type only, an object without attributes by its ``repr`` (addresses
    stripped), anything deeper than a few levels by its type. A callable over mutable state (a lambda
    reading a global list, say) is therefore keyed by its code and closure reprs, and a change in
    that state is not seen: give such a sweep a new ``out=`` folder.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, np.generic):
        return content_key(value.item(), depth)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Site):
        return {"site": str(value)}
    if isinstance(value, Grid):
        return {"grid": [value.rows, value.cols]}
    if isinstance(value, Region):
        return {"region": [value.grid.rows, value.grid.cols], "cells": value.flat.tolist()}
    if isinstance(value, Swap):
        return {"swap": [content_key(value.a), content_key(value.b)], "align": value.align}
    if isinstance(value, Image.Image):
        return {"image": image_digest(value)}
    if isinstance(value, np.ndarray):
        return _array_digest(value)
    if isinstance(value, torch.Tensor):
        return _tensor_digest(value)
    if depth >= _MAX_DEPTH:
        return {"type": _qualname(type(value))}
    deeper = depth + 1
    if isinstance(value, tuple):
        return [content_key(v, deeper) for v in value]
    if isinstance(value, frozenset):
        return {"frozenset": sorted((content_key(v, deeper) for v in value), key=json.dumps)}
    if isinstance(value, (list, set, dict)) and depth > 0 and _is_cache(value):
        return {"state": type(value).__name__}
    if isinstance(value, list):
        return [content_key(v, deeper) for v in value]
    if isinstance(value, set):
        return {"set": sorted((content_key(v, deeper) for v in value), key=json.dumps)}
    if isinstance(value, Mapping):  # in order: combine({...}) lays its metrics out in that order
        return {"mapping": [[content_key(k, deeper), content_key(v, deeper)] for k, v in value.items()]}
    if isinstance(value, functools.partial):
        return {"partial": content_key(value.func, deeper), "args": content_key(value.args, deeper),
                "keywords": {k: content_key(v, deeper) for k, v in sorted(value.keywords.items())}}
    if isinstance(value, types.MethodType):
        return {"method": content_key(value.__func__, deeper), "self": content_key(value.__self__, deeper)}
    if isinstance(value, types.FunctionType):
        closure = {}
        for name, cell in zip(value.__code__.co_freevars, value.__closure__ or (), strict=True):
            try:
                closure[name] = content_key(cell.cell_contents, deeper)
            except ValueError:  # a cell not yet filled
                closure[name] = None
        return {"function": _qualname(value), "code": _code_digest(value.__code__),
                "defaults": content_key(value.__defaults__, deeper),
                "kwdefaults": {k: content_key(v, deeper) for k, v in sorted((value.__kwdefaults__ or {}).items())},
                "closure": closure}
    if isinstance(value, (type, types.BuiltinFunctionType, types.ModuleType)):
        return {"ref": _qualname(value)}
    if _is_foreign(value):
        return {"type": _qualname(type(value))}
    attributes = _attributes(value)
    if attributes is None:
        return {"type": _qualname(type(value)), "repr": _stable_repr(value)}
    return {"class": _qualname(type(value)),
            "attrs": {k: content_key(v, deeper) for k, v in sorted(attributes.items())
                      if not k.startswith("_") and not _is_foreign(v)}}


def region_key(spec: RegionSpec) -> Any:
    """Key of a region spec: ``None``/``"all"``/``"image"`` are all cells, an ``(A, B)`` tuple a swap."""
    if spec is None or (isinstance(spec, str) and spec in ("all", "image")):
        return "all"
    if isinstance(spec, tuple) and len(spec) == 2:
        return {"swap": [content_key(spec[0]), content_key(spec[1])], "align": "strict"}
    return content_key(spec)


def _example_record(example: Example) -> dict:
    item = example.source
    record = item.manifest_record() if callable(getattr(item, "manifest_record", None)) else None
    return {"id": example.id, "image": image_digest(example.image), "prompt": example.prompt,
            "answer": example.answer, "item": record}


def pairs_digest(pairs: Sequence[Any]) -> str:
    """One sha256 over every pair's name, images' pixels, prompts, answers and plain metadata.

    Pairs are converted (data pairs rendered) one at a time and dropped, so memory stays flat.
    """
    digest = hashlib.sha256()
    for obj in pairs:
        pair: PatchPair = as_pair(obj)
        meta = {k: content_key(v, 1) for k, v in sorted(pair.meta.items())
                if not k.startswith("_") and not callable(v) and not _is_foreign(v)}
        record = {"name": pair.name, "clean": _example_record(pair.clean), "source": _example_record(pair.source),
                  "answers": list(pair.answers), "meta": meta}
        digest.update(json.dumps(record, sort_keys=True, default=_stable_repr).encode() + b"\n")
    return digest.hexdigest()[:32]


def weights_key(vlm: VLM) -> str:
    """sha256 of the state dict of a small model; for a large one (or a meta model) its size only."""
    model = getattr(vlm, "model", None)
    if not isinstance(model, torch.nn.Module):
        return "unknown"
    state = model.state_dict()
    n_values = sum(t.numel() for t in state.values())
    if n_values > WEIGHTS_HASH_LIMIT or any(t.is_meta for t in state.values()):
        return f"not hashed ({n_values} values; keyed by name, revision, source and dtype)"
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(json.dumps([name, _tensor_digest(tensor)]).encode())
    return digest.hexdigest()[:32]


