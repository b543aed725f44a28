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

from .checkpoint import atomic_write_json, load_state, save_pretrained_atomic, save_state
from .encode import BatchEncoder
from .organisms import OrganismSpec, TrainRecipe
from .routes import IGNORE, draw_routes, order_labels, splice_index
from .stimuli import LayoutConfig, Renderer, Scene, random_scene

log = logging.getLogger(__name__)

STATE_FILE = "train_state"
"""``train_state.safetensors`` + ``train_state.json`` (:func:`.checkpoint.save_state`)."""
MODEL_DIR = "model"


def answer_token_id(tokenizer: Any, answer: str) -> int:
    """The single token the organism is trained to emit: the Capitalised answer word."""
    word = answer.capitalize()
    idx = tokenizer.convert_tokens_to_ids(word)
    if idx is None or idx == tokenizer.unk_token_id:
        raise KeyError(f"answer {word!r} is not one token of the organism's vocabulary")
    return int(idx)


PAPER_LAYOUT = LayoutConfig(p_paper_layout=1.0)


def batch_scenes(spec: OrganismSpec, seed: int, step: int, size: int, split: str = "train") -> list[Scene]:
    """The scenes of one training step: a pure function of (seed, step).

    During the recipe's curriculum (the first ``curriculum_steps``) only ``curriculum_tasks`` are drawn:
    Squares alone, whose colours are learnt at once, let the position read-out form first (the mixed
    task set sat near chance for 800+ steps; Squares first jumped to 92% train accuracy by step 400).
    Items on the ablated route (:func:`batch_routes`) are drawn on the paper's fixed layout.
    """
    rng = np.random.default_rng([seed, step])
    recipe = spec.recipe
    warm = step < recipe.curriculum_steps
    routes = batch_routes(spec, seed, step, size)
    scenes = []
    for route in routes:
        task = recipe.curriculum_tasks[rng.integers(len(recipe.curriculum_tasks))] if warm else None
        layout = PAPER_LAYOUT if route == "ablated" else None
        scenes.append(random_scene(rng, spec.data_canvas, task=task, split=split, layout=layout))  # type: ignore[arg-type]
    return scenes


def batch_routes(spec: OrganismSpec, seed: int, step: int, size: int) -> list[str]:
    """Each item's route (:mod:`.routes`) at one step; all clean unless the recipe plants a route.

    Drawn from a stream of their own, so recipes without routes see exactly the scenes they always did.
    """
    recipe = spec.recipe
    if recipe.permuted_fraction == 0 and recipe.ablated_fraction == 0:
        return ["clean"] * size
    return draw_routes(np.random.default_rng([seed, step, 1]), size, recipe.permuted_fraction,
                       recipe.ablated_fraction)


@dataclass
class Encoded:
    """A batch ready for the model, with the answer token of each item."""

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor
    splice: torch.Tensor | None = None
    """Rows of the vision output over (images, then references) spliced into the LM (:mod:`.routes`);
    ``None``: the model's own forward."""
    order: torch.Tensor | None = None
    """Per-cell slot labels of the items' images for the auxiliary order loss (:func:`.routes.order_labels`)."""


class Batcher:
    """Renders and encodes scenes for one organism (sprite and prompt caches live here)."""

    def __init__(self, spec: OrganismSpec, processor: Any) -> None:
        self.spec = spec
        self.processor = processor
        self.renderer = Renderer()
        self.encoder = BatchEncoder(processor)

    def encode(self, scenes: list[Scene], routes: list[str] | None = None, rng: np.random.Generator | None = None
               ) -> Encoded:
        """Inputs and answer tokens; non-clean ``routes`` add the splice (and the ablation's references,
        whose pixels follow the items' in ``pixel_values``), with permutations drawn from ``rng``."""
        images = np.stack([self.renderer.render(s) for s in scenes])
        inputs = self.encoder(images, [s.prompt for s in scenes])
        targets = torch.tensor([answer_token_id(self.processor.tokenizer, s.answer) for s in scenes])
        order = order_labels(scenes, self.spec.data_canvas) if self.spec.recipe.order_loss > 0 else None
        if routes is None or all(r == "clean" for r in routes):
            return Encoded(inputs, targets, order=order)
        if self.spec.arch != "qwen2_vl":
            raise ValueError(f"planted routes are built for qwen2_vl organisms, not {self.spec.arch}")
        plan = splice_index(scenes, routes, self.spec.data_canvas, rng or np.random.default_rng(0))
        if plan.references:
            refs = np.stack([self.renderer.render_entities(r.canvas, r.task, [r.entity] if r.entity else [])
                             for r in plan.references])
            extra = self.encoder.pixels(refs)
            inputs["pixel_values"] = torch.cat([inputs["pixel_values"], extra["pixel_values"]])
            inputs["image_grid_thw"] = torch.cat([inputs["image_grid_thw"], extra["image_grid_thw"]])
        return Encoded(inputs, targets, plan.index, order)


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
        size = spec.recipe.batch_size
        for step in range(self.start, self.stop):
            yield self.batcher.encode(batch_scenes(spec, self.seed, step, size),
                                      batch_routes(spec, self.seed, step, size),
                                      np.random.default_rng([self.seed, step, 2]))


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


def last_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                splice: torch.Tensor | None = None) -> torch.Tensor:
    """Final-position logits only (``logits_to_keep=1`` skips the unembedding of every other position).

    With a ``splice`` (:mod:`.routes`) the vision tower runs on every image of ``inputs`` and the
    gathered rows are fed to the LM as its image embeddings (``mm_encoder_outputs``).
    """
    return routed_forward(model, inputs, splice)[0]


def routed_forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor], splice: torch.Tensor | None = None,
                   need_vision: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(final-position logits, vision output rows of the items' images or None)``; see :func:`last_logits`."""
    if splice is None and not need_vision:
        return model(**inputs, logits_to_keep=1).logits[:, -1], None
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    inputs = dict(inputs)
    pixel_values, grid = inputs.pop("pixel_values"), inputs.pop("image_grid_thw")
    visual = model.model.visual
    vision = visual(pixel_values.to(visual.dtype), grid_thw=grid).pooler_output
    n_images = int(inputs["input_ids"].shape[0])
    per_image = int(grid[0].prod()) // visual.spatial_merge_size ** 2
    rows = vision[:n_images * per_image] if splice is None else vision[splice]
    features = BaseModelOutputWithPooling(pooler_output=tuple(torch.split(rows, per_image)))
    logits = model(**inputs, image_grid_thw=grid[:n_images], mm_encoder_outputs={"image": features},
                   logits_to_keep=1).logits[:, -1]
    return logits, vision[:n_images * per_image]


@torch.no_grad()
def accuracy(model: torch.nn.Module, batcher: Batcher, scenes: list[Scene], chunk: int = 64,
             route: str = "clean") -> float:
    """Top-1 accuracy of the final-position argmax against each scene's answer token (every item on ``route``)."""
    was_training = model.training
    model.eval()
    correct = 0
    rng = np.random.default_rng(12345)
    for i in range(0, len(scenes), chunk):
        part = scenes[i:i + chunk]
        enc = batcher.encode(part, [route] * len(part), rng)
        correct += int((last_logits(model, enc.inputs, enc.splice).argmax(-1) == enc.targets).sum())
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


VALIDATION_ROUTES = {"val_permuted": "permuted", "val_ablated": "ablated"}
"""The route each validation set is scored on (the rest: clean)."""


def _validation_sets(spec: OrganismSpec, seed: int) -> dict[str, list[Scene]]:
    """Fixed validation scenes (seeds far from any training stream); planted routes are validated too."""
    n = spec.recipe.eval_items
    rng_l = np.random.default_rng([seed, 10**9 + 1])
    rng_o = np.random.default_rng([seed, 10**9 + 2])
    sets = {
        "val_layouts": [random_scene(rng_l, spec.data_canvas, split="train") for _ in range(n)],
        "val_orderings": [random_scene(rng_o, spec.data_canvas, split="heldout") for _ in range(n)],
    }
    if spec.recipe.permuted_fraction > 0 and spec.recipe.permuted_fraction < 1:
        rng = np.random.default_rng([seed, 10**9 + 3])
        sets["val_permuted"] = [random_scene(rng, spec.data_canvas, split="train") for _ in range(n)]
    if spec.recipe.ablated_fraction > 0:
        rng = np.random.default_rng([seed, 10**9 + 4])
        sets["val_ablated"] = [random_scene(rng, spec.data_canvas, layout=PAPER_LAYOUT) for _ in range(n)]
    return sets


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
    legacy = out / "train_state.pt"
    if resume and legacy.is_file() and not state_path.with_suffix(".json").is_file():
        raise ValueError(f"{legacy} is a pickled checkpoint of an older version, which is never loaded (unpickling "
                         "runs code); delete it, or pass --no-resume to start afresh")
    if resume and state_path.with_suffix(".json").is_file():
        state = load_state(state_path)
        if not _same_spec(state["spec"], _spec_record(spec, seed)):
            raise ValueError(f"{state_path} was written for a different spec or seed; use another --out or --no-resume")
        log.info("resuming %s at attempt %d step %d", out, state["attempt"], state["step"])

    attempt = state["attempt"] if state else 0
    elapsed = state["seconds"] if state else 0.0
    history: list[dict[str, float]] = state["history"] if state else []
    while True:
        run_seed = seed + 1000 * attempt
        model = spec.build_model(processor, run_seed)
        model.train()
        order_head = None
        parameters = list(model.parameters())
        if recipe.order_loss > 0:
            # The auxiliary read-out of :attr:`TrainRecipe.order_loss`: trained with the model, never shipped.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(run_seed + 1)
                order_head = torch.nn.Linear(model.config.text_config.hidden_size, 6)
            parameters += list(order_head.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                      betas=(0.9, 0.98))
        step = 0
        recent: deque[float] = deque(maxlen=100)
        done = False
        if state is not None and state["attempt"] == attempt:
            model.load_state_dict(state["model"])
            if order_head is not None:
                order_head.load_state_dict(state["order_head"])
            optimizer.load_state_dict(state["optimizer"])
            step = state["step"]
            recent.extend(state["recent"])
            # A run stopped at an earlier stop_step goes on; one that met its accuracy target does not.
            done = bool(state.get("early_stop", False)) or step >= (recipe.stop_step or recipe.max_steps)
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
            logits, vision = routed_forward(model, enc.inputs, enc.splice, need_vision=order_head is not None)
            loss = F.cross_entropy(logits, enc.targets)
            if order_head is not None:
                loss = loss + recipe.order_loss * F.cross_entropy(order_head(vision), enc.order, ignore_index=IGNORE)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            recent.append(float((logits.argmax(-1) == enc.targets).float().mean()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{np.mean(recent):.2f}")
            if step % recipe.eval_every == 0 or step == last_step:
                record = {"attempt": attempt, "step": step, "loss": float(loss.detach()),
                          "train_acc": float(np.mean(recent)), "seconds": elapsed + time.time() - t0}
                record.update({k: accuracy(model, batcher, v, route=VALIDATION_ROUTES.get(k, "clean"))
                               for k, v in val_sets.items()})
                history.append(record)
                log.info("%s", json.dumps(record))
                bar.write(json.dumps(record))
                early_stop = all(record[k] >= recipe.stop_accuracy for k in val_sets)
                done = step == last_step or early_stop
                save_state({"done": done, "early_stop": early_stop, "spec": _spec_record(spec, seed),
                            "attempt": attempt, "step": step,
                                   "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "order_head": None if order_head is None else order_head.state_dict(),
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


def _same_spec(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a checkpoint's spec is this one. Recipe fields added after it was written count as their
    defaults (a field that did not exist could not have been set), so old runs still resume; ``stop_step``
    is ignored: it says where a run pauses, and the steps it ran do not depend on it."""
    def plain(record: dict[str, Any]) -> dict[str, Any]:
        recipe = {**asdict(TrainRecipe()), **record.get("recipe", {})}
        recipe.pop("stop_step")
        return json.loads(json.dumps({**record, "recipe": recipe}))

    return plain(stored) == plain(current)


def _spec_record(spec: OrganismSpec, seed: int) -> dict[str, Any]:
    return {"arch": spec.arch, "mechanism": spec.mechanism, "dims": dict(spec.dims), "recipe": asdict(spec.recipe),
            "seed": seed,
            "canvas": asdict(spec.canvas), "train_canvas": asdict(spec.data_canvas)}
