"""The training loop: answer-token loss on streamed random-layout scenes, seeded, resumable, with restarts.

Every batch is a pure function of ``(seed, attempt, step)``, so a run resumed from its last
checkpoint sees the same data it would have seen uninterrupted, and two runs with the same seed
and thread count produce the same weights.

Example (a few steps, not a full organism):
    >>> from spatial_interp.training.loop import train
    >>> from spatial_interp.training.organisms import SPECS
    >>> import dataclasses, tempfile
    >>> spec = SPECS["qwen2_vl"]
    >>> spec = dataclasses.replace(spec, recipe=dataclasses.replace(spec.recipe, max_steps=2, batch_size=2,
    ...                                                               eval_every=2, eval_items=4))
    >>> result = train(spec, tempfile.mkdtemp(), progress=False)  # doctest: +SKIP
    >>> result.steps  # doctest: +SKIP
    2
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import atomic_torch_save, atomic_write_json, save_pretrained_atomic
from .encode import BatchEncoder
from .organisms import OrganismSpec
from .stimuli import Renderer, Scene, random_scene

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
MODEL_DIR = "model"


def answer_token_id(tokenizer: Any, answer: str) -> int:
    """The single token the organism is trained to emit: the Capitalised answer word."""
    word = answer.capitalize()
    idx = tokenizer.convert_tokens_to_ids(word)
    if idx is None or idx == tokenizer.unk_token_id:
        raise KeyError(f"answer {word!r} is not one token of the organism's vocabulary")
    return int(idx)


def batch_scenes(spec: OrganismSpec, seed: int, step: int, size: int, split: str = "train") -> list[Scene]:
    """The scenes of one training step: a pure function of (seed, step).

    During the recipe's curriculum (the first ``curriculum_steps``) only ``curriculum_tasks`` are drawn:
    Squares alone, whose colours are learnt at once, let the position read-out form first (the mixed
    task set sat near chance for 800+ steps; Squares first jumped to 92% train accuracy by step 400).
    """
    rng = np.random.default_rng([seed, step])
    recipe = spec.recipe
    warm = step < recipe.curriculum_steps
    scenes = []
    for _ in range(size):
        task = recipe.curriculum_tasks[rng.integers(len(recipe.curriculum_tasks))] if warm else None
        scenes.append(random_scene(rng, spec.data_canvas, task=task, split=split))  # type: ignore[arg-type]
    return scenes


@dataclass
class Encoded:
    """A batch ready for the model, with the answer token of each item."""

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor


class Batcher:
    """Renders and encodes scenes for one organism (sprite and prompt caches live here)."""

    def __init__(self, spec: OrganismSpec, processor: Any) -> None:
        self.spec = spec
        self.processor = processor
        self.renderer = Renderer()
        self.encoder = BatchEncoder(processor)

    def encode(self, scenes: list[Scene]) -> Encoded:
        images = np.stack([self.renderer.render(s) for s in scenes])
        inputs = self.encoder(images, [s.prompt for s in scenes])
        targets = torch.tensor([answer_token_id(self.processor.tokenizer, s.answer) for s in scenes])
        return Encoded(inputs, targets)


class _StepBatches(torch.utils.data.IterableDataset):
    """Encoded training batches for steps ``[start, stop)`` of one attempt, in order.

    Run in a DataLoader worker process, this renders and encodes the next batches on the second core
    while the model trains on the first; the batches are the same as in-process ones (each is a pure
    function of ``(seed, step)``).
    """

    def __init__(self, batcher: Batcher, seed: int, start: int, stop: int) -> None:
        self.batcher, self.seed, self.start, self.stop = batcher, seed, start, stop

    def __iter__(self) -> Iterator[Encoded]:
        spec = self.batcher.spec
        for step in range(self.start, self.stop):
            yield self.batcher.encode(batch_scenes(spec, self.seed, step, spec.recipe.batch_size))


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def step_batches(batcher: Batcher, seed: int, start: int, stop: int, workers: int) -> Iterator[Encoded]:
    """The training batches of steps ``[start, stop)``, prefetched by ``workers`` (0 or 1) processes."""
    data = _StepBatches(batcher, seed, start, stop)
    if workers == 0:
        return iter(data)
    if workers != 1:
        raise ValueError(f"workers must be 0 or 1 (one ordered stream of batches), got {workers}")
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=1, prefetch_factor=4,
                                         worker_init_fn=_one_thread, persistent_workers=False)
    return iter(loader)


def last_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Final-position logits only (``logits_to_keep=1`` skips the unembedding of every other position)."""
    return model(**inputs, logits_to_keep=1).logits[:, -1]


@torch.no_grad()
def accuracy(model: torch.nn.Module, batcher: Batcher, scenes: list[Scene], chunk: int = 64) -> float:
    """Top-1 accuracy of the final-position argmax against each scene's answer token."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(scenes), chunk):
        enc = batcher.encode(scenes[i:i + chunk])
        correct += int((last_logits(model, enc.inputs).argmax(-1) == enc.targets).sum())
    model.train(was_training)
    return correct / max(len(scenes), 1)


def lr_at(step: int, recipe: Any) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak at ``max_steps``."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    t = min(1.0, (step - recipe.warmup_steps) / max(1, recipe.max_steps - recipe.warmup_steps))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    model_dir: Path
    steps: int
    attempt: int
    seed: int
    seconds: float
    validation: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def _validation_sets(spec: OrganismSpec, seed: int) -> dict[str, list[Scene]]:
    """Fixed validation scenes (seeds far from any training stream)."""
    n = spec.recipe.eval_items
    rng_l = np.random.default_rng([seed, 10**9 + 1])
    rng_o = np.random.default_rng([seed, 10**9 + 2])
    return {
        "val_layouts": [random_scene(rng_l, spec.data_canvas, split="train") for _ in range(n)],
        "val_orderings": [random_scene(rng_o, spec.data_canvas, split="heldout") for _ in range(n)],
    }


def train(
    spec: OrganismSpec,
    out: str | Path,
    *,
    seed: int = 0,
    resume: bool = True,
    progress: bool = True,
    threads: int | None = None,
    workers: int = 1,
) -> TrainResult:
    """Train one organism into ``out/model`` (checkpointing ``out/train_state.pt`` as it goes).

    Args:
        spec: the organism design (architecture, sizes, recipe).
        out: run folder; an existing ``train_state.pt`` there is resumed unless ``resume=False``.
        seed: base seed; restart ``k`` uses ``seed + 1000 * k`` for both weights and data.
        threads: ``torch.set_num_threads`` for this run (results are reproducible per thread count).
        workers: 1 renders and encodes batches in a background process (same batches, ~1.5x faster on
            two cores); 0 does it in-process.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        torch.set_num_threads(threads)
    recipe = spec.recipe
    processor = spec.build_processor()
    batcher = Batcher(spec, processor)
    val_sets = _validation_sets(spec, seed)

    state_path = out / STATE_FILE
    state: dict[str, Any] | None = None
    if resume and state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state["spec"] != _spec_record(spec, seed):
            raise ValueError(f"{state_path} was written for a different spec or seed; use another --out or --no-resume")
        log.info("resuming %s at attempt %d step %d", out, state["attempt"], state["step"])

    attempt = state["attempt"] if state else 0
    elapsed = state["seconds"] if state else 0.0
    history: list[dict[str, float]] = state["history"] if state else []
    while True:
        run_seed = seed + 1000 * attempt
        model = spec.build_model(processor, run_seed)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                      betas=(0.9, 0.98))
        step = 0
        recent: deque[float] = deque(maxlen=100)
        done = False
        if state is not None and state["attempt"] == attempt:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            step = state["step"]
            recent.extend(state["recent"])
            done = state.get("done", False)
        state = None
        stalled = False
        if done:
            break
        last_step = recipe.stop_step or recipe.max_steps
        bar = tqdm(total=last_step, initial=step, disable=not progress, desc=f"{spec.name} try {attempt}",
                   unit="step", dynamic_ncols=True)
        t0 = time.time()
        batches = step_batches(batcher, run_seed, step, last_step, workers)
        while step < last_step and not done:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, recipe)
            enc = next(batches)
            logits = last_logits(model, enc.inputs)
            loss = F.cross_entropy(logits, enc.targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            recent.append(float((logits.argmax(-1) == enc.targets).float().mean()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{np.mean(recent):.2f}")
            if step % recipe.eval_every == 0 or step == last_step:
                record = {"attempt": attempt, "step": step, "loss": float(loss), "train_acc": float(np.mean(recent)),
                          "seconds": elapsed + time.time() - t0}
                record.update({k: accuracy(model, batcher, v) for k, v in val_sets.items()})
                history.append(record)
                log.info("%s", json.dumps(record))
                bar.write(json.dumps(record))
                done = step == last_step or all(record[k] >= recipe.stop_accuracy for k in val_sets)
                atomic_torch_save({"done": done, "spec": _spec_record(spec, seed), "attempt": attempt, "step": step,
                                   "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "recent": list(recent), "history": history,
                                   "seconds": elapsed + time.time() - t0}, state_path)
            if (not done and step == recipe.stall_step and np.mean(recent) < recipe.stall_accuracy
                    and attempt < recipe.max_restarts):
                stalled = True
                break
        bar.close()
        elapsed += time.time() - t0
        if stalled:
            log.warning("attempt %d stalled at step %d (train acc %.2f); restarting with seed %d",
                        attempt, step, np.mean(recent), seed + 1000 * (attempt + 1))
            attempt += 1
            continue
        break

    model.eval()
    model.requires_grad_(False)
    validation = {k: v for k, v in history[-1].items() if k.startswith("val_")}
    model_dir = out / MODEL_DIR
    save_pretrained_atomic(model, processor, model_dir)
    result = TrainResult(model_dir, step, attempt, seed + 1000 * attempt, elapsed, validation, history)
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    summary["spec"] = _spec_record(spec, seed)
    summary["threads"] = torch.get_num_threads()
    atomic_write_json(out / "train_summary.json", summary)
    return result


def _spec_record(spec: OrganismSpec, seed: int) -> dict[str, Any]:
    return {"arch": spec.arch, "dims": dict(spec.dims), "recipe": asdict(spec.recipe), "seed": seed,
            "canvas": asdict(spec.canvas), "train_canvas": asdict(spec.data_canvas)}
