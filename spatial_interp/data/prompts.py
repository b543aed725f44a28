"""Prompt texts (spec §2.6, §3.1) and chat rendering through a model's own processor.

User texts keep their trailing space: the model's next token is the answer.

Example:
    >>> squares_prompt("left", "red")
    'The color of the square to the left of the red square is '
    >>> chat_messages("Hi ")[1]["content"]
    [{'type': 'image'}, {'type': 'text', 'text': 'Hi '}]
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

SYSTEM_TEXT = "You are a helpful assistant. You respond in one token."

DIRECTIONS: tuple[str, ...] = ("left", "right", "above", "below")

PREPOSITIONS: MappingProxyType[str, str] = MappingProxyType({
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
})

_OPPOSITE: MappingProxyType[str, str] = MappingProxyType(
    {"left": "right", "right": "left", "above": "below", "below": "above"}
)


def _check_direction(direction: str) -> None:
    if direction not in PREPOSITIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")


def opposite(direction: str) -> str:
    """left <-> right, above <-> below."""
    _check_direction(direction)
    return _OPPOSITE[direction]


def orientation_of(direction: str) -> str:
    """"horizontal" for left/right, "vertical" for above/below."""
    _check_direction(direction)
    return "horizontal" if direction in ("left", "right") else "vertical"


def target_slot(direction: str) -> int:
    """Slot of the answer in a three-slot image: 0 for left/above, 2 for right/below."""
    _check_direction(direction)
    return 0 if direction in ("left", "above") else 2


def squares_prompt(direction: str, middle_color: str) -> str:
    _check_direction(direction)
    return f"The color of the square {PREPOSITIONS[direction]} the {middle_color.lower()} square is "


def shapes_prompt(direction: str, middle_color: str, middle_shape: str) -> str:
    _check_direction(direction)
    return (f"The color of the shape {PREPOSITIONS[direction]} the {middle_color.lower()} "
            f"{middle_shape.lower()} is ")


def objects_prompt(direction: str, middle_name: str) -> str:
    _check_direction(direction)
    return f"The object {PREPOSITIONS[direction]} the {middle_name} is a(n) "


def whatsup_prompt(direction: str, reference: str) -> str:
    if direction not in ("left", "right"):
        raise ValueError(f"What'sUp items are left/right only, got {direction!r}")
    return f"The object on the floor {PREPOSITIONS[direction]} the {reference} is a(n) "


def chat_messages(user_text: str, system: str | None = SYSTEM_TEXT) -> list[dict[str, Any]]:
    """The HF multimodal message list: optional system turn, then one user turn [image, text]."""
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]})
    return messages


def render_prompt(processor: Any, user_text: str, system: str | None = SYSTEM_TEXT) -> str:
    """The full prompt string from the processor's chat template, with the generation prompt added.

    The user text goes in unchanged (trailing space included); whatever the model's template does with
    it is what the reference implementation got as well. Pass the result with the image to
    ``processor(text=prompt, images=[image])``.
    """
    return processor.apply_chat_template(chat_messages(user_text, system), add_generation_prompt=True,
                                         tokenize=False)
