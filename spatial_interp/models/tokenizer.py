"""Offline word-level tokenizers that carry a model family's real special tokens.

Real checkpoints ship byte-level BPE vocabularies of 32k–262k entries that cannot be downloaded
here. The tiny models and the trained organisms only need a vocabulary in which every prompt word
and every answer is one token, plus the exact special tokens and chat template of the family they
imitate, so that the processor inserts image placeholders exactly as it does for the real model.

Example:
    >>> from spatial_interp.models.tokenizer import build_word_tokenizer
    >>> tok = build_word_tokenizer(["red", "square"], specials={"<pad>": None}, pad_token="<pad>")
    >>> tok.tokenize("Red square")
    ['Red', 'square']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

UNK_TOKEN = "<unk_word>"

# Words of the paper's prompts, answers and chat scaffolding (spec §2.6, §3). Each appears lower-case
# and Capitalised in the vocabulary so that the four answer variants are each one token.
PROMPT_WORDS = (
    "you", "are", "a", "an", "the", "helpful", "assistant", "respond", "in", "one", "token", "do", "not", "add",
    "any", "additional", "text", "color", "colour", "of", "square", "shape", "object", "to", "left", "right",
    "above", "below", "middle", "is", "which", "side", "on", "where", "located", "answer", "with", "word", "or",
    "using", "as", "reference", "point", "floor", "photo", "describe", "image", "this", "what", "red", "green",
    "blue", "black", "brown", "gray", "grey", "orange", "white", "yellow", "purple", "pink", "circle",
    "triangle", "star", "cross", "heart", "apple", "bell", "bomb", "hat", "key", "pot", "rose", "top",
    "tangerine", "chair", "table", "armchair", "mug", "cup", "bowl", "plate", "book", "laptop", "phone",
    "lemon", "banana", "cap", "bottle", "can", "dog", "lamp", "scarf", "pillow", "knife", "vase", "kettle",
    "sunglasses", "helmet", "painting", "spatula", "remote", "glass", "glasses", "plant", "refrigerator",
    "oven", "tv", "couch", "bird", "giraffe", "cow", "toilet", "sink", "mouse", "keyboard", "car", "bus",
    "person", "bench", "system", "user", "model",
)

# Jinja that stores the system message's text in ``ns.system``, for families whose format has no
# system turn and folds the text into the user turn instead (Gemma-3, Pixtral).
SYSTEM_PRELUDE = (
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% if m['content'] is string %}{% set ns.system = m['content'] %}"
    "{% else %}{% set ns.system = m['content'][0]['text'] %}{% endif %}"
    "{% endif %}{% endfor %}"
)


def build_word_tokenizer(
    words: Iterable[str],
    specials: Mapping[str, int | None],
    *,
    chat_template: str | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    unk_token: str = UNK_TOKEN,
    extra_special_tokens: Mapping[str, str] | None = None,
    padding_side: str = "left",
) -> PreTrainedTokenizerFast:
    """Build a fast word-level tokenizer.

    Args:
        words: vocabulary words; each is added lower-case and Capitalised.
        specials: special token strings, each with a fixed id or ``None`` for "next free id".
            Fixed ids reproduce a family's real ids (e.g. Pixtral's ``[IMG]`` = 10, Qwen's
            ``<|image_pad|>`` = 151655); words take the lowest free ids and remaining gaps below the
            highest id are filled with placeholder tokens.
        chat_template: Jinja chat template in the family's own format.
        extra_special_tokens: named special tokens (``name`` must end in ``_token``) that processors
            read as tokenizer attributes, e.g. Gemma-3's ``boi_token``.
    """
    fixed = {tok: idx for tok, idx in specials.items() if idx is not None}
    if len(set(fixed.values())) != len(fixed):
        raise ValueError(f"special token ids collide: {fixed}")
    vocab: dict[str, int] = dict(fixed)
    taken = set(fixed.values())
    free = (i for i in range(10**9) if i not in taken)

    def add(tok: str) -> None:
        if tok not in vocab:
            vocab[tok] = next(free)

    for tok, idx in specials.items():
        if idx is None:
            add(tok)
    add(unk_token)
    for word in words:
        add(word.lower())
        add(word.capitalize())
    for mark in [".", ",", "?", "!", ":", ";", "-", "'", '"', "(", ")", "/"]:
        add(mark)
    # Ids left unused below the highest fixed id get placeholder tokens, so the vocabulary is dense.
    top = max(vocab.values())
    used = set(vocab.values())
    for idx in range(top + 1):
        if idx not in used:
            vocab[f"<unused{idx}>"] = idx

    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    # Registered on the core tokenizer so they are matched before word splitting and keep their ids.
    core.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in specials])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=unk_token,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        padding_side=padding_side,
        model_max_length=1_000_000,
        **dict(extra_special_tokens or {}),
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
