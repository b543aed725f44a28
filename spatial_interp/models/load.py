"""``si.load(name)``: real checkpoints (hub id or local folder), offline tiny models, shipped organisms.

Example:
    >>> import spatial_interp as si
    >>> si.load("tiny-gemma3").arch
    'gemma3'
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .adapters import ADAPTERS, adapter_for_arch, adapter_for_config
from .vlm import VLM, ModelInfo

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny-"
ORGANISM_PREFIX = "organism-"
ORGANISM_DIR = Path(__file__).parent / "organisms"

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class UnknownModelError(ValueError):
    """A model name that is neither a tiny model, a shipped organism, nor a loadable checkpoint."""


def _arch_of(short: str) -> str:
    """``qwen2-vl`` / ``qwen2_vl`` → ``qwen2_vl``."""
    return short.replace("-", "_").replace(".", "_")


def tiny_names() -> list[str]:
    return [TINY_PREFIX + arch.replace("_", "-").replace("2-5", "2.5") for arch in ADAPTERS]


def organism_names() -> list[str]:
    if not ORGANISM_DIR.is_dir():
        return []
    return sorted(ORGANISM_PREFIX + p.name for p in ORGANISM_DIR.iterdir() if (p / "config.json").is_file())


def organism_record(folder: Path) -> dict[str, Any]:
    """What a shipped organism is (``organism.json``): its mechanism (``"emergent"`` or the planted route)
    and, for planted organisms, the routes for order it was built to have."""
    path = folder / "organism.json"
    if not path.is_file():
        return {"mechanism": "emergent", "planted": None}
    return json.loads(path.read_text(encoding="utf-8"))


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}") from None


def load(
    name: str,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    seed: int = 0,
    revision: str | None = None,
    **model_kwargs: Any,
) -> VLM:
    """Load a VLM by name.

    Args:
        name: a Hugging Face hub id (``"Qwen/Qwen2-VL-7B-Instruct"``) or local checkpoint folder;
            ``"tiny-<arch>"`` for an architecture-exact random tiny model built offline
            (``tiny-qwen2-vl``, ``tiny-qwen2.5-vl``, ``tiny-gemma3``, ``tiny-llava``, ``tiny-pixtral``);
            ``"organism-<arch>"`` for a trained model organism shipped in the package.
        device: torch device; ``"meta"`` builds the structure without weights (no download of them).
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.
        seed: initialisation seed of tiny models (same seed, same weights).
        revision: hub revision of a real checkpoint.
        model_kwargs: passed to ``from_pretrained`` (e.g. ``attn_implementation``). With
            ``device_map="auto"`` (and optionally ``max_memory={0: "70GiB", "cpu": "100GiB"}``) the
            checkpoint is dispatched by ``accelerate`` straight from disk in ``dtype``, across the GPUs
            (and CPU) it fits on; it is then left where it was placed (no ``.to()``), and ``device`` must
            stay at its default.

    Weights of a checkpoint load in ``dtype`` directly (no float32 copy first).
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)  # a local checkpoint folder given as a Path
    if not isinstance(name, str):
        raise TypeError(f"si.load() takes a model name string, got {name!r} ({type(name).__name__}): pass a hub id "
                        f"such as 'Qwen/Qwen2-VL-7B-Instruct', a local checkpoint folder, or one of "
                        f"{', '.join(tiny_names() + organism_names())}")
    if not name.strip():
        raise UnknownModelError("si.load() got an empty model name: pass a hub id, a local checkpoint folder, or one "
                                f"of {', '.join(tiny_names() + organism_names())}")
    torch_dtype = resolve_dtype(dtype)
    meta = str(device) == "meta"
    dispatched = model_kwargs.get("device_map") is not None and not meta
    if meta:
        model_kwargs = {k: v for k, v in model_kwargs.items() if k not in ("device_map", "max_memory")}
    if dispatched:
        _check_dispatch(name, device, model_kwargs)
    elif "max_memory" in model_kwargs:
        raise ValueError("max_memory= only applies with device_map= (e.g. device_map='auto', "
                         "max_memory={0: '70GiB', 'cpu': '100GiB'})")
    if name.startswith(TINY_PREFIX):
        vlm = _load_tiny(name, seed)
    elif name.startswith(ORGANISM_PREFIX):
        folder = ORGANISM_DIR / name[len(ORGANISM_PREFIX):]
        if not (folder / "config.json").is_file():
            raise UnknownModelError(f"no shipped organism {name!r}; available: {', '.join(organism_names()) or 'none'}")
        vlm = _load_pretrained(str(folder), torch_dtype, None, source="organism", name=name,
                               meta=str(device) == "meta", **model_kwargs)
        vlm.info.extra["organism"] = organism_record(folder)
    else:
        from .hub import cache_only

        if cache_only(name):
            log.warning("the Hugging Face hub is offline or unreachable: loading %s from the local cache only", name)
            model_kwargs = {**model_kwargs, "local_files_only": True}
        vlm = _load_pretrained(name, torch_dtype, revision, source="hub", name=name,
                               meta=str(device) == "meta", **model_kwargs)
    if not dispatched:
        # A dispatched model already sits where accelerate put it, in torch_dtype; moving it would
        # break its hooks (and for a model larger than one device, cannot work).
        vlm.model.to(device=device, dtype=torch_dtype)
    return vlm


def _check_dispatch(name: str, device: Any, model_kwargs: dict[str, Any]) -> None:
    """Refuse ``device_map=`` where it cannot work, before anything is loaded."""
    import importlib.util

    if name.startswith(TINY_PREFIX):
        raise ValueError(f"{name} is built in memory, not loaded from a checkpoint: device_map= does not apply; "
                         "use device= (e.g. device='cuda')")
    if str(device) != "cpu":
        raise ValueError(f"give device={str(device)!r} or device_map={model_kwargs['device_map']!r}, not both: "
                         "device_map places the weights itself")
    if importlib.util.find_spec("accelerate") is None:
        raise ValueError("device_map= needs the accelerate package (pip install accelerate, or the package's "
                         "[gpu] extra); without it load onto one device with device='cuda'")


def _load_tiny(name: str, seed: int) -> VLM:
    arch = _arch_of(name[len(TINY_PREFIX):])
    if arch not in ADAPTERS:
        raise UnknownModelError(f"unknown tiny model {name!r}; available: {', '.join(tiny_names())}")
    adapter = adapter_for_arch(arch)
    spec = adapter.tiny(seed)
    from transformers import AutoModelForImageTextToText

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(spec.config)
    adapter.randomize_tiny(model, torch.Generator().manual_seed(seed + 1))
    model.requires_grad_(False)
    return VLM(model, spec.processor, adapter, ModelInfo(name=name, source="tiny", extra={"seed": seed}))


def _load_pretrained(path: str, dtype: torch.dtype, revision: str | None, *, source: str, name: str,
                     meta: bool = False, **model_kwargs: Any) -> VLM:
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    local_only = bool(model_kwargs.get("local_files_only"))
    try:
        config = AutoConfig.from_pretrained(path, revision=revision, local_files_only=local_only)
    except OSError as error:
        if local_only:
            raise UnknownModelError(
                f"cannot load {name!r}: it is not a local checkpoint folder, the Hugging Face hub is offline or "
                "unreachable, and it is not in the local hub cache; download it where there is a network "
                "(huggingface-cli download), pass its folder, or use one of "
                f"{', '.join(tiny_names() + organism_names())}") from None
        raise UnknownModelError(
            f"cannot load {name!r}: not a local checkpoint folder and not found on the Hugging Face hub "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); offline, use one of "
            f"{', '.join(tiny_names() + organism_names())}"
        ) from error
    adapter = adapter_for_config(config)
    if meta:
        # Structure only: config and processor, no weights (for `info`, geometry and planning).
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
    else:
        log.info("loading %s (%s) as %s", name, adapter.arch, dtype)
        model = AutoModelForImageTextToText.from_pretrained(path, revision=revision, dtype=dtype, **model_kwargs)
    processor = AutoProcessor.from_pretrained(path, revision=revision, local_files_only=local_only)
    model.requires_grad_(False)
    return VLM(model, processor, adapter, ModelInfo(name=name, revision=revision, source=source))


def meta_vlm(arch: str) -> VLM:
    """The flagship checkpoint of ``arch`` built from its written-out config on the ``meta`` device.

    No weights and no download: for checking layer counts, widths and geometry of real-size models.
    The processor is the real processor class and settings around an offline tokenizer whose special
    tokens sit at their real ids.
    """
    from transformers import AutoModelForImageTextToText

    adapter = adapter_for_arch(arch)
    config = adapter.meta_config()
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    processor = adapter.processor(adapter.tokenizer(real_ids=True))
    return VLM(model, processor, adapter, ModelInfo(name=f"meta-{arch}", source="meta"))
