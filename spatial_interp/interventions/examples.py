"""What interventions run on: (image, prompt) examples, clean/source pairs, and region specs.

The primitives take plain data so they do not depend on how stimuli were made. Objects from
``spatial_interp.data`` (an ``Item``; a pair carrying a clean and a counterfactual item and answer
strings) are converted by :func:`as_example` / :func:`as_pair`, as are ``(image, prompt)`` tuples.

Example:
    >>> from PIL import Image
    >>> from spatial_interp.geometry import Grid, Region
    >>> from spatial_interp.interventions.examples import Example, PatchPair, Swap
    >>> white, red = Image.new("RGB", (336, 336), "white"), Image.new("RGB", (336, 336), "red")
    >>> pair = PatchPair(Example(white, "The color is "), Example(red, "The color is "), answers=("white", "red"))
    >>> grid = Grid(12, 12)
    >>> swap = Swap(Region.columns(grid, 0, 4), Region.columns(grid, 8, 12))
    >>> len(swap.a), len(swap.b)
    (48, 48)
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from ..geometry import GeometryError, ImageLayout, Region

Align = Literal["strict", "concat"]


@dataclass(frozen=True, eq=False)
class Example:
    """One model input: an image and the user prompt about it.

    Attributes:
        image: the picture (one image per prompt).
        prompt: the user text (the chat template and system text are added by ``vlm.prepare``).
        id: a stable name used in results; defaults to a content hash.
        answer: the expected answer word, if any (for top-1 scoring).
        source: the object this example was made from (e.g. a ``data.items.Item``), for region
            functions that need its entities.
    """

    image: Image.Image
    prompt: str
    id: str | None = None
    answer: str | None = None
    source: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.image, Image.Image):
            raise TypeError(f"Example.image must be a PIL.Image.Image, got {type(self.image).__name__}")
        if not isinstance(self.prompt, str):
            raise TypeError(f"Example.prompt must be a str, got {type(self.prompt).__name__}")

    @property
    def key(self) -> str:
        """Content hash of (image pixels, prompt): equal keys mean one forward serves both."""
        cached = self.__dict__.get("_key")
        if cached is None:
            digest = hashlib.sha1()
            image = self.image
            digest.update(f"{image.mode}|{image.size}|".encode())
            digest.update(image.tobytes())
            digest.update(b"|" + self.prompt.encode())
            cached = digest.hexdigest()[:16]
            object.__setattr__(self, "_key", cached)
        return cached

    @property
    def image_key(self) -> str:
        """Content hash of the image pixels alone: equal keys mean equal vision-tower inputs, whatever
        the prompt (what prompt-independent reads such as ``lm_resid(0)``'s image rows are keyed by)."""
        cached = self.__dict__.get("_image_key")
        if cached is None:
            digest = hashlib.sha1()
            digest.update(f"{self.image.mode}|{self.image.size}|".encode())
            digest.update(self.image.tobytes())
            cached = digest.hexdigest()[:16]
            object.__setattr__(self, "_image_key", cached)
        return cached

    @property
    def name(self) -> str:
        return self.id if self.id is not None else self.key


@dataclass(frozen=True, eq=False)
class PatchPair:
    """A clean run and the source run whose activations are patched into it.

    Attributes:
        clean: the run that is intervened on.
        source: where patched activations come from (the paper's counterfactual).
        answers: strings whose probabilities the default metric reports, in order
            (§6: the clean answer, the middle, the cf answer).
        answer_names: what each answer is (``("clean answer", "middle", "cf answer")``): the names of
            the metric's outputs; ``answer 0``, ``answer 1``, … when empty.
        id: a stable name used in results.
        meta: anything else (the tuple, the direction), kept for region functions.
    """

    clean: Example
    source: Example
    answers: tuple[str, ...] = ()
    id: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    answer_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.answer_names and len(self.answer_names) != len(self.answers):
            raise ValueError(f"PatchPair {self.id or ''!r}: {len(self.answer_names)} answer_names for "
                             f"{len(self.answers)} answers; give one name per answer string")

    @property
    def name(self) -> str:
        return self.id if self.id is not None else f"{self.clean.name}<-{self.source.name}"


@dataclass(frozen=True)
class Swap:
    """Two regions whose contents trade places (§6 criss-cross): clean[A_i] ← source[B_i] and back.

    Cells pair up row-major. ``align="strict"`` requires ``len(a) == len(b)``; ``"concat"`` reproduces
    the authors' code, which pairs the lists ``A + B`` and ``B + A`` element-wise whatever their sizes.
    """

    a: Region
    b: Region
    align: Align = "strict"

    def __post_init__(self) -> None:
        if not isinstance(self.a, Region) or not isinstance(self.b, Region):
            raise TypeError("Swap(a, b) takes two Regions")
        if self.align not in ("strict", "concat"):
            raise ValueError(f"Swap align must be 'strict' or 'concat', got {self.align!r}")
        if self.align == "strict" and len(self.a) != len(self.b):
            raise GeometryError(
                f"swap regions differ in size ({len(self.a)} vs {len(self.b)} cells), so they cannot be "
                "aligned cell by cell; use regions of equal size, or Swap(a, b, align='concat') for the "
                "authors' A+B ↔ B+A pairing"
            )


RegionSpec = Region | Swap | tuple | str | None | Callable[..., Any]
"""A region argument: a :class:`Region`; a :class:`Swap` or ``(A, B)`` tuple; ``"all"``/``"image"``/
``None`` for every cell; or a function ``(example_or_pair, layout) -> Region | Swap`` for regions
that depend on the item (its object cells)."""


def resolve_region(spec: RegionSpec, owner: Any, layout: ImageLayout) -> Region | Swap:
    """Turn a :data:`RegionSpec` into a concrete region on ``layout``'s grid."""
    if callable(spec) and not isinstance(spec, (Region, Swap)):
        spec = spec(owner, layout)
    if spec is None or (isinstance(spec, str) and spec in ("all", "image")):
        return Region.all(layout.grid)
    if isinstance(spec, str):
        raise ValueError(f"unknown region name {spec!r}; use 'all'/'image', a Region, a Swap or a function")
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError(f"a region tuple must be (A, B) for a swap, got {len(spec)} entries")
        spec = Swap(*spec)
    if not isinstance(spec, (Region, Swap)):
        raise TypeError(f"a region function returned {type(spec).__name__}; expected a Region or a Swap")
    regions = (spec,) if isinstance(spec, Region) else (spec.a, spec.b)
    for region in regions:
        if region.grid != layout.grid:
            raise GeometryError(f"region is on a {region.grid} grid but the image has a {layout.grid} grid; "
                                "build regions from the layout of the image they are used on")
    return spec


# --- conversions from other objects --------------------------------------------------------------
def as_example(obj: Any) -> Example:
    """An :class:`Example` from an ``Example``, an ``(image, prompt)`` tuple, or any object with
    ``image`` and ``prompt`` attributes (a ``data.items.Item``; its ``id``/``answer`` are kept)."""
    if isinstance(obj, Example):
        return obj
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], Image.Image):
        return Example(obj[0], obj[1])
    if hasattr(obj, "image") and hasattr(obj, "prompt"):
        ident = getattr(obj, "id", None)
        return Example(obj.image, obj.prompt, id=None if ident is None else str(ident),
                       answer=getattr(obj, "answer", None), source=obj)
    raise TypeError(f"cannot use a {type(obj).__name__} as an example: pass an Example, an (image, prompt) "
                    "tuple, or an object with .image and .prompt")


def example_chunks(items: Iterable[Any], size: int | None) -> Iterator[list[Example]]:
    """``items`` as :func:`as_example` lists of ``size`` (``None``: one list of all), built a chunk at a time.

    A sequence (such as a lazy ``data.items.ItemSet``) is indexed, anything else iterated, so only the
    chunk in hand is rendered and held: memory stays flat however many items there are.

    >>> from PIL import Image
    >>> items = [(Image.new("RGB", (8, 8)), f"prompt {i}") for i in range(5)]
    >>> [len(c) for c in example_chunks(items, 2)]
    [2, 2, 1]
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"chunk size must be a positive integer, got {size!r}")
    if isinstance(items, (Image.Image, str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(f"items must be a sequence of examples, got a {type(items).__name__}")
    if isinstance(items, Sequence):
        n = len(items)
        step = size or max(n, 1)
        for start in range(0, n, step):
            yield [as_example(items[i]) for i in range(start, min(start + step, n))]
        return
    iterator = iter(items)
    while chunk := [as_example(obj) for obj in itertools.islice(iterator, size)]:
        yield chunk


def prepared_chunks(vlm: Any, items: Iterable[Any], size: int | None, *, system: Any,
                    prefetch: bool = True) -> Iterator[tuple[list[Example], Any]]:
    """``(chunk, vlm.prepare(chunk))`` for each :func:`example_chunks` chunk, in order.

    With ``prefetch`` the next chunk is rendered and run through the processor in a worker thread while
    the caller's forward on this one runs (:mod:`spatial_interp.prefetch`); at most two chunks are alive.
    """
    from ..prefetch import prefetched

    def prepare() -> Iterator[tuple[list[Example], Any]]:
        for chunk in example_chunks(items, size):
            yield chunk, vlm.prepare([e.image for e in chunk], [e.prompt for e in chunk], system=system)

    yield from prefetched(prepare(), enabled=prefetch)


_CLEAN = ("clean",)
_SOURCE = ("source", "cf", "counterfactual", "corrupt")
_ANSWERS = ("answers", "prob_strs", "answer_strings")


def as_pair(obj: Any) -> PatchPair:
    """A :class:`PatchPair` from a ``PatchPair``, a ``(clean, source)`` tuple of examples, or an object
    with ``clean`` and ``cf``/``source``/``counterfactual`` attributes (``data``'s pair objects; their
    ``answers``/``prob_strs`` and ``id`` are kept)."""
    if isinstance(obj, PatchPair):
        return obj
    if isinstance(obj, tuple) and len(obj) == 2 and not isinstance(obj[0], Image.Image):
        return PatchPair(as_example(obj[0]), as_example(obj[1]))
    clean = _first_attr(obj, _CLEAN)
    source = _first_attr(obj, _SOURCE)
    if clean is None or source is None:
        raise TypeError(f"cannot use a {type(obj).__name__} as a pair: pass a PatchPair, a (clean, source) "
                        "tuple, or an object with .clean and .cf (or .source)")
    answers = _first_attr(obj, _ANSWERS) or ()
    meta = {k: v for k, v in vars(obj).items() if k not in _CLEAN + _SOURCE} if hasattr(obj, "__dict__") else {}
    ident = getattr(obj, "id", None)
    if ident is None and all(hasattr(obj, a) for a in ("kind", "direction", "index")):
        ident = f"{obj.kind}-{obj.direction}-{obj.index:03d}"  # data.pairs.Pair names its items this way
    return PatchPair(as_example(clean), as_example(source), tuple(str(a) for a in answers),
                     id=None if ident is None else str(ident), meta=meta,
                     answer_names=tuple(getattr(obj, "answer_names", ()) or ()))


def pair_name(obj: Any) -> str:
    """The name :func:`as_pair` would give ``obj``, without rendering its images when it can."""
    if isinstance(obj, PatchPair):
        return obj.name
    ident = getattr(obj, "id", None)
    if ident is not None:
        return str(ident)
    if all(hasattr(obj, a) for a in ("kind", "direction", "index")):
        return f"{obj.kind}-{obj.direction}-{obj.index:03d}"
    return as_pair(obj).name


def _first_attr(obj: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None
