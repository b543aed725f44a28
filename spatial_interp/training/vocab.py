"""What the organisms are trained to name: colours, shapes, objects, directions and prompt words.

The paper's evaluation sets (six colours, six fixed shape–colour pairs, eight objects) are subsets
of richer *training* pools. A small pool lets a model memorise an answer prior per colour set
instead of reading positions (the feasibility run's failure on held-out orderings), so training
draws from ten extra colours and sixteen extra objects as well.

Example:
    >>> from spatial_interp.training import vocab
    >>> vocab.PAPER_COLOURS[:3]
    ('red', 'green', 'blue')
    >>> vocab.prep("left")
    'to the left of'
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from ..models.tokenizer import PROMPT_WORDS

SYSTEM_TEXT = "You are a helpful assistant. You respond in one token."
"""The paper's system message (spec §2.6), used for training and evaluation alike."""

COLOURS: dict[str, tuple[int, int, int]] = {
    # The paper's Qwen/Gemma palette (spec §2.3), in its dict order.
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
    "brown": (150, 75, 0), "gray": (128, 128, 128),
    # Training-only colours, chosen far from each other and from the white background.
    "orange": (255, 165, 0), "yellow": (230, 210, 0), "purple": (128, 0, 128), "pink": (255, 105, 180),
    "cyan": (0, 200, 220), "navy": (0, 0, 110), "olive": (110, 120, 0), "teal": (0, 120, 120),
    "magenta": (255, 0, 255), "maroon": (110, 0, 20),
}
PAPER_COLOURS: tuple[str, ...] = ("red", "green", "blue", "black", "brown", "gray")

SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "star", "cross", "heart")
PAPER_SHAPE_COLOURS: tuple[tuple[str, str], ...] = (
    ("square", "red"), ("circle", "green"), ("triangle", "blue"), ("star", "black"), ("cross", "brown"),
    ("heart", "gray"),
)
"""The paper's fixed (shape, colour) pairs for the Shapes task (spec §2.4)."""

OBJECTS: dict[str, int] = {
    # The paper's eight objects in its order (spec §2.5), as OpenMoji code points.
    "orange": 0x1F34A, "apple": 0x1F34E, "pot": 0x1F372, "bell": 0x1F514, "hat": 0x1F3A9, "rose": 0x1F339,
    "key": 0x1F511, "bomb": 0x1F4A3,
    # Training-only objects (single words, visually distinct at 56 px).
    "banana": 0x1F34C, "lemon": 0x1F34B, "cup": 0x2615, "book": 0x1F4D5, "car": 0x1F697, "dog": 0x1F415,
    "bird": 0x1F426, "phone": 0x1F4F1,
}
PAPER_OBJECTS: tuple[str, ...] = ("orange", "apple", "pot", "bell", "hat", "rose", "key", "bomb")

DIRECTIONS: tuple[str, ...] = ("left", "right", "above", "below")
PREPOSITIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}

TASKS: tuple[str, ...] = ("squares", "shapes", "objects")


def prep(direction: str) -> str:
    """The paper's preposition for a direction."""
    try:
        return PREPOSITIONS[direction]
    except KeyError:
        raise ValueError(f"unknown direction {direction!r}; use one of {', '.join(DIRECTIONS)}") from None


def orientation(direction: str) -> str:
    """``"h"`` for left/right queries, ``"v"`` for above/below (the layout the paper uses for each)."""
    prep(direction)
    return "h" if direction in ("left", "right") else "v"


def organism_words() -> list[str]:
    """Vocabulary of the organisms' word-level tokenizers: the shared prompt words plus every name above.

    ``n`` is included so the Objects prompt's literal ``a(n)`` is in-vocabulary.
    """
    words = list(PROMPT_WORDS)
    for word in [*COLOURS, *SHAPES, *OBJECTS, "n"]:
        if word not in words:
            words.append(word)
    return words


def is_heldout(identities: Sequence[str], fraction: float = 0.15) -> bool:
    """Whether an ordered triple of entity identities is reserved for evaluation.

    A fixed hash of the ordered names (not a random draw), so the split is the same in every
    process and every seed, and a triple's reversal is held out independently of the triple.
    """
    key = "|".join(identities).encode()
    return zlib.crc32(key) % 10_000 < fraction * 10_000


def entity_pool(task: str) -> tuple[str, ...]:
    """Training identities of a task: colour names (squares, shapes) or object names."""
    if task in ("squares", "shapes"):
        return tuple(COLOURS)
    if task == "objects":
        return tuple(OBJECTS)
    raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
