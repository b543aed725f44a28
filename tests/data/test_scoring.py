import math

import pytest
import torch

from spatial_interp.data.prompts import SYSTEM_TEXT, chat_messages, render_prompt
from spatial_interp.data.scoring import (
    TokenizationError,
    answer_variants,
    is_single_token,
    logit_diff,
    normalize,
    single_token_filter,
    top1_correct,
    variant_id_tensor,
    variant_probs,
    variant_token_ids,
)

torch.set_num_threads(1)


def test_normalize_and_variants():
    assert normalize("  Red\n") == "red"
    assert normalize(" hot-dog!") == "hotdog"
    assert normalize("Ünïcode 42") == "ncode42"
    assert answer_variants("Red") == ["red", "Red", " red", " Red"]
    assert answer_variants("dining table") == ["dining table", "Dining table", " dining table", " Dining table"]


@pytest.mark.parametrize("which", ["hf", "raw"])
def test_variant_ids(which, hf_tokenizer, raw_tokenizer):
    tok = hf_tokenizer if which == "hf" else raw_tokenizer
    vocab = raw_tokenizer.get_vocab()
    assert variant_token_ids(tok, "red") == [vocab["red"], vocab["Red"], vocab[" red"], vocab[" Red"]]
    with pytest.raises(TokenizationError, match=r"'oven-mitt'.*variant 'oven-mitt'.*3 token"):
        variant_token_ids(tok, "oven-mitt")
    with pytest.raises(TokenizationError, match=r"'blue2'.*variant 'Blue2'"):
        variant_token_ids(tok, "blue2")
    ids = variant_id_tensor(tok, [["red", "green"], ["blue", "red"]])
    assert ids.shape == (2, 2, 4) and ids[1, 1].tolist() == ids[0, 0].tolist()


@pytest.mark.parametrize("which", ["hf", "raw"])
def test_single_token_filter(which, hf_tokenizer, raw_tokenizer):
    tok = hf_tokenizer if which == "hf" else raw_tokenizer
    assert is_single_token(tok, "chair")
    assert not is_single_token(tok, "oven-mitt")  # 3 tokens
    assert not is_single_token(tok, "armchair")  # "Armchair" is not in the vocabulary
    assert not is_single_token(tok, "dragonfruit")  # unknown word -> [UNK]
    assert single_token_filter(tok, ["plate", "oven-mitt", "cup", "armchair"]) == ["plate", "cup"]


def test_top1_correct(hf_tokenizer):
    vocab = hf_tokenizer.get_vocab()
    logits = torch.full((3, len(vocab)), -5.0)
    logits[0, vocab[" Red"]] = 3.0
    logits[1, vocab["green"]] = 3.0
    logits[2, vocab["Blue"]] = 3.0
    assert top1_correct(hf_tokenizer, logits, ["red", "blue", "BLUE"]) == [True, False, True]
    with pytest.raises(ValueError):
        top1_correct(hf_tokenizer, logits, ["red"])
    from spatial_interp.data.scoring import top1_with_prob

    tok, p = top1_with_prob(hf_tokenizer, logits)[0]
    n = len(vocab)
    assert normalize(tok) == "red" and p == pytest.approx(math.exp(3) / (math.exp(3) + (n - 1) * math.exp(-5)))


def test_variant_probs_hand_computed():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    z = [math.exp(v) for v in (0.0, 1.0, 2.0, 3.0)]
    p0 = [v / sum(z) for v in z]
    ids = torch.tensor([[[0, 1, 2, 3], [3, 3, 0, 0]], [[0, 1, 2, 3], [3, 3, 0, 0]]])
    out = variant_probs(logits, ids)
    assert out.shape == (2, 2)
    assert out[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert out[0, 1].item() == pytest.approx(2 * p0[3] + 2 * p0[0], abs=1e-6)  # duplicates count twice
    assert out[1, 1].item() == pytest.approx(1.0, abs=1e-6)
    shared = variant_probs(logits, torch.tensor([[0, 0, 1, 1]]))
    assert shared[:, 0].tolist() == pytest.approx([2 * p0[0] + 2 * p0[1], 1.0], abs=1e-6)


def test_logit_diff():
    logits = torch.tensor([[0.5, 2.0, -1.0], [3.0, 0.0, 1.0]])
    assert logit_diff(logits, [1, 0], [2, 2]).tolist() == pytest.approx([3.0, 2.0])


def test_chat_messages():
    msgs = chat_messages("The color of the square above the red square is ")
    assert msgs == [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_TEXT}]},
        {"role": "user", "content": [{"type": "image"},
                                     {"type": "text", "text": "The color of the square above the red square is "}]},
    ]
    assert SYSTEM_TEXT == "You are a helpful assistant. You respond in one token."
    assert chat_messages("x", system=None) == [{"role": "user", "content": [{"type": "image"},
                                                                            {"type": "text", "text": "x"}]}]


TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_render_prompt_with_a_real_chat_template(hf_tokenizer):
    hf_tokenizer.chat_template = TEMPLATE
    text = render_prompt(hf_tokenizer, "The object above the apple is a(n) ")
    assert text == ("<|system|>You are a helpful assistant. You respond in one token.<|end|>"
                    "<|user|><image>The object above the apple is a(n) <|end|><|assistant|>")
    assert render_prompt(hf_tokenizer, "Q? ", system=None) == "<|user|><image>Q? <|end|><|assistant|>"
