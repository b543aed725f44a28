"""Counterfactual pairs: last-token 5-tuples (spec §5) and criss-cross 3-tuples (spec §6).

Tuple algebra (``t`` = the sampled tuple, ``d`` = the direction):

* **last token** (5 elements, ``t1`` shared middle)

  - left/above:  clean slots (t0, t1, t2), cf slots (t4, t1, t3)
  - right/below: clean slots (t2, t1, t0), cf slots (t3, t1, t4)
  - clean prompt asks ``d`` (answer t0); cf prompt asks ``opposite(d)`` (answer t3)

* **criss-cross** (3 elements): left/above: clean (t0, t1, t2), cf (t2, t1, t0); right/below: clean
  (t2, t1, t0), cf (t0, t1, t2). The prompt is the same (``d``); clean answer t0, cf answer t2.

``prob_strs`` are the tuple's answer strings in tuple order (lowercase), the strings of the 4-variant
probability metric. Sampling: one ``random.Random(seed)`` stream consumed by the directions in order;
per direction draw distinct elements, skip tuples already drawn, keep a tuple when the optional
``keep(clean_item, cf_item)`` callback accepts it, stop at ``n_per_direction`` kept or ``max_attempts``
draws. A ``keep`` with a ``many(pairs) -> list[bool]`` method (``evaluation.PairFilter``) judges
candidates in batches: ``build_pairs`` draws ahead, judges the batch in one call, and rewinds the
stream to just after the draw that completed a direction, so the pairs, their ``attempt`` numbers and
the next direction's draws are exactly those of the one-at-a-time filter.

Example:
    >>> from spatial_interp.data.tasks import task_for
    >>> pairs = criss_cross_pairs(task_for("squares", "qwen2_vl"), "qwen2_vl", n_per_direction=2)
    >>> p = pairs["right"][0]
    >>> p.clean.prompt == p.cf.prompt, p.clean.answer == p.elements[0], p.cf.answer == p.elements[2]
    (True, True, True)
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .canvas import CanvasGeometry, canvas_for
from .items import Item
from .palettes import LAST_TOKEN_PALETTE
from .prompts import DIRECTIONS, opposite
from .stimuli import Renderer
from .tasks import Task, squares_task, three_slot_item

PAIR_KINDS = ("last_token", "criss_cross")
TUPLE_SIZE: MappingProxyType[str, int] = MappingProxyType({"last_token": 5, "criss_cross": 3})

#: Model keys of the reference implementation's ``cf_pairs/<setting>.json`` files, by canvas preset.
REFERENCE_PAIR_KEYS: MappingProxyType[str, str] = MappingProxyType(
    {"qwen2_vl": "qwen2-vl-7b", "gemma3": "gemma-3-4b-it", "pixtral": "pixtral-12b", "pixtral_3x3": "pixtral-12b"}
)

#: ``make_item(slot_names, direction, item_id) -> Item``: builds one image+prompt item.
ItemMaker = Callable[[Sequence[str], str, str], Item]
#: ``sampler(rng) -> tuple``: draws one candidate tuple of names.
Sampler = Callable[[random.Random], tuple[str, ...]]
KeepFn = Callable[[Item, Item], bool]
"""``keep(clean, cf) -> bool``; may also have ``many(pairs) -> list[bool]`` and ``pairs_per_call`` (batched)."""


def pair_slots(kind: str, elements: Sequence[str], direction: str) -> tuple[tuple[str, ...], str,
                                                                             tuple[str, ...], str]:
    """``(clean_slots, clean_direction, cf_slots, cf_direction)`` of a tuple (module docstring)."""
    t = tuple(elements)
    first = direction in ("left", "above")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    if kind == "last_token":
        if len(t) != 5:
            raise ValueError("last-token tuples have 5 elements")
        clean = (t[0], t[1], t[2]) if first else (t[2], t[1], t[0])
        cf = (t[4], t[1], t[3]) if first else (t[3], t[1], t[4])
        return clean, direction, cf, opposite(direction)
    if kind == "criss_cross":
        if len(t) != 3:
            raise ValueError("criss-cross tuples have 3 elements")
        clean = t if first else t[::-1]
        return clean, direction, clean[::-1], direction
    raise ValueError(f"unknown pair kind {kind!r}; expected one of {PAIR_KINDS}")


ANSWER_ROLES = MappingProxyType({
    # t0 answers the clean prompt and t3 the cf prompt; t2 sits in the clean image at the slot the cf prompt
    # asks about (the paper's ordinal signal), t4 in the cf image at the slot the clean prompt asks about.
    "last_token": ("clean answer", "middle", "clean image at cf slot", "cf answer", "cf image at clean slot"),
    # The cf run swaps the outer slots, so the clean answer t0 and the cf answer t2 trade places.
    "criss_cross": ("clean answer", "middle", "cf answer"),
})
"""Role of each of a pair's ``prob_strs``, by pair kind, in tuple order."""


@dataclass
class Pair:
    """A clean / counterfactual pair. ``clean`` and ``cf`` are rendered when accessed."""

    kind: str
    direction: str
    elements: tuple[str, ...]
    prob_strs: list[str]
    attempt: int
    _make: ItemMaker = field(repr=False, compare=False)
    index: int = 0

    def _slots(self) -> tuple[tuple[str, ...], str, tuple[str, ...], str]:
        return pair_slots(self.kind, self.elements, self.direction)

    @property
    def clean(self) -> Item:
        slots, d, _, _ = self._slots()
        return self._make(slots, d, f"{self.kind}-{self.direction}-{self.index:03d}-clean")

    @property
    def cf(self) -> Item:
        _, _, slots, d = self._slots()
        return self._make(slots, d, f"{self.kind}-{self.direction}-{self.index:03d}-cf")

    @property
    def clean_answer(self) -> str:
        return self.prob_strs[0]

    @property
    def cf_answer(self) -> str:
        return self.prob_strs[3] if self.kind == "last_token" else self.prob_strs[2]

    @property
    def answer_names(self) -> tuple[str, ...]:
        """What each of ``prob_strs`` is to this pair (metric names: ``clean answer``, ``cf answer``, …)."""
        return ANSWER_ROLES[self.kind]


@dataclass
class PairSet:
    """Pairs per direction plus how many draws each direction needed."""

    kind: str
    pairs: dict[str, list[Pair]]
    attempts: dict[str, int]
    seed: int = 0

    def __getitem__(self, direction: str) -> list[Pair]:
        return self.pairs[direction]

    def __iter__(self) -> Iterator[Pair]:
        for plist in self.pairs.values():
            yield from plist

    def __len__(self) -> int:
        return sum(len(p) for p in self.pairs.values())

    def tuples(self) -> dict[str, list[list[str]]]:
        """``direction -> list of tuples``, the layout of the reference ``cf_pairs/<setting>.json``."""
        return {d: [list(p.elements) for p in plist] for d, plist in self.pairs.items()}

    def save_json(self, path: str | Path) -> None:
        data = {"kind": self.kind, "seed": self.seed, "attempts": self.attempts, "pairs": self.tuples()}
        Path(path).write_text(json.dumps(data, indent=1) + "\n")


def _answer(name: str) -> str:
    return name.lower()


def build_pairs(kind: str, make_item: ItemMaker, sampler: Sampler, *, directions: Sequence[str] = DIRECTIONS,
                n_per_direction: int = 50, max_attempts: int = 2000, seed: int = 0,
                keep: KeepFn | None = None, answer_of: Callable[[str], str] = _answer) -> PairSet:
    """Sample pairs with one seeded stream over ``directions`` (see the module docstring).

    A batched ``keep`` (one with ``many``) is called with at most ``keep.pairs_per_call`` candidates
    (default 16). The first call of each direction asks for just the pairs still needed, so it judges
    no candidate the one-at-a-time filter would not; later calls draw ahead by the acceptance rate seen
    so far, and what they judge past the last kept pair is discarded (the stream is rewound).
    """
    if kind not in PAIR_KINDS:
        raise ValueError(f"unknown pair kind {kind!r}; expected one of {PAIR_KINDS}")
    many = getattr(keep, "many", None)
    if keep is not None and not callable(keep) and many is None:
        raise TypeError(f"keep must be a function (clean, cf) -> bool or have a many(pairs) method, got {keep!r}")
    per_call = int(getattr(keep, "pairs_per_call", 16)) if many is not None else 1
    if per_call < 1:
        raise ValueError(f"keep.pairs_per_call must be >= 1, got {per_call}")
    rng = random.Random(seed)
    out: dict[str, list[Pair]] = {}
    attempts: dict[str, int] = {}
    judged = accepted = 0  # over all directions: the acceptance rate that sizes the look-ahead
    for direction in directions:
        kept: list[Pair] = []
        seen: set[tuple[str, ...]] = set()
        n = 0
        while len(kept) < n_per_direction and n < max_attempts:
            needed = n_per_direction - len(kept)
            rate = accepted / judged if judged else 1.0
            want = min(per_call, max(needed, math.ceil(needed / max(rate, 1 / per_call))))
            # (pair, draws so far, stream state) right after each fresh candidate's draw, in draw order.
            candidates: list[tuple[Pair, int, Any]] = []
            while len(candidates) < want and n < max_attempts:
                n += 1
                elements = tuple(sampler(rng))
                if len(elements) != TUPLE_SIZE[kind]:
                    raise ValueError(f"sampler returned {len(elements)} elements for a {kind} tuple")
                if elements in seen:
                    continue
                seen.add(elements)
                pair = Pair(kind, direction, elements, [answer_of(e) for e in elements], n, make_item, len(kept))
                candidates.append((pair, n, rng.getstate() if many is not None else None))
            if keep is None:
                verdicts = [True] * len(candidates)
            elif many is not None:
                verdicts = [bool(v) for v in many([(p.clean, p.cf) for p, _, _ in candidates])]
                if len(verdicts) != len(candidates):
                    raise ValueError(f"keep.many returned {len(verdicts)} verdicts for {len(candidates)} pairs")
            else:
                verdicts = [bool(keep(p.clean, p.cf)) for p, _, _ in candidates]
            for (pair, draws, state), ok in zip(candidates, verdicts, strict=True):
                judged += 1
                if not ok:
                    continue
                accepted += 1
                kept.append(dataclasses.replace(pair, index=len(kept)))
                if len(kept) == n_per_direction:
                    if state is not None:
                        # Undo the look-ahead past this draw: the one-at-a-time filter stopped here.
                        rng.setstate(state)
                        n = draws
                    break
        out[direction] = kept
        attempts[direction] = n
    return PairSet(kind, out, attempts, seed)


def pairs_from_tuples(kind: str, make_item: ItemMaker, tuples: dict[str, Sequence[Sequence[str]]],
                      answer_of: Callable[[str], str] = _answer) -> PairSet:
    """Rebuild pairs from stored tuples (e.g. the reference ``cf_pairs`` JSON for one model)."""
    pairs = {d: [Pair(kind, d, tuple(t), [answer_of(e) for e in t], i + 1, make_item, i)
                 for i, t in enumerate(tl)] for d, tl in tuples.items()}
    return PairSet(kind, pairs, {d: len(v) for d, v in pairs.items()})


# --------------------------------------------------------------------------- synthetic tasks


def task_item_maker(task: Task, geometry: str | CanvasGeometry, renderer: Renderer | None = None) -> ItemMaker:
    """``make_item`` for a synthetic task: option names -> a three-slot item on ``geometry``."""
    geom = canvas_for(geometry)
    rend = renderer or Renderer()

    def make(slots: Sequence[str], direction: str, item_id: str) -> Item:
        return three_slot_item(task, [task.option(s) for s in slots], direction, geom, rend, item_id)

    return make


def pool_sampler(pool: Sequence[str], k: int) -> Sampler:
    """Draw ``k`` distinct names with ``rng.sample``."""
    names = list(pool)
    if len(names) < k:
        raise ValueError(f"a pool of {len(names)} cannot fill {k}-element tuples")
    return lambda rng: tuple(rng.sample(names, k))


def last_token_squares_task(tokenizer: Any = None) -> Task:
    """Last-token Squares options: the 8-entry palette minus White, single-token filtered if a tokenizer
    is given (lower and Capitalized, no leading space), up to 7 colours."""
    pool = [c for c in LAST_TOKEN_PALETTE if c != "white"]
    if tokenizer is not None:
        from .scoring import single_token_filter

        pool = single_token_filter(tokenizer, pool)
    return squares_task(pool)


def _synthetic_pairs(kind: str, task: Task, geometry: str | CanvasGeometry, pool: Sequence[str] | None,
                     **kwargs: Any) -> PairSet:
    names = list(pool) if pool is not None else [o.name for o in task.options]
    return build_pairs(kind, task_item_maker(task, geometry), pool_sampler(names, TUPLE_SIZE[kind]), **kwargs)


def last_token_pairs(task: Task, geometry: str | CanvasGeometry, *, pool: Sequence[str] | None = None,
                     directions: Sequence[str] = DIRECTIONS, n_per_direction: int = 50,
                     max_attempts: int = 2000, seed: int = 0, keep: KeepFn | None = None) -> PairSet:
    """Last-token pairs (§5) for a synthetic task; ``pool`` defaults to the task's option names."""
    return _synthetic_pairs("last_token", task, geometry, pool, directions=directions,
                            n_per_direction=n_per_direction, max_attempts=max_attempts, seed=seed, keep=keep)


def criss_cross_pairs(task: Task, geometry: str | CanvasGeometry, *, pool: Sequence[str] | None = None,
                      directions: Sequence[str] = DIRECTIONS, n_per_direction: int = 50,
                      max_attempts: int = 2000, seed: int = 0, keep: KeepFn | None = None) -> PairSet:
    """Criss-cross pairs (§6, §7.2) for a synthetic task; ``pool`` defaults to the task's option names."""
    return _synthetic_pairs("criss_cross", task, geometry, pool, directions=directions,
                            n_per_direction=n_per_direction, max_attempts=max_attempts, seed=seed, keep=keep)
