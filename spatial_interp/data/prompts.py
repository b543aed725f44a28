"""Chat prompts in each model's own template (spec §2.6, §11.3).

Example:
    >>> chat_messages("The color is ", system=None)[0]["role"]
    'user'
"""

from __future__ import annotations

from typing import Any

SYSTEM_TEXT = "You are a helpful assistant. You respond in one token."
"""The paper's system text, used for every model and task (spec §2.6)."""


def chat_messages(user_text: str, system: str | None = SYSTEM_TEXT) -> list[dict[str, Any]]:
    """One optional system turn and one user turn ``[image, text]`` in the Hugging Face multimodal format."""
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]})
    return messages


def render_prompt(processor: Any, user_text: str, system: str | None = SYSTEM_TEXT) -> str:
    """The processor's chat template applied with a generation prompt; the trailing space of ``user_text`` is kept."""
    return processor.apply_chat_template(chat_messages(user_text, system), add_generation_prompt=True, tokenize=False)
