"""Behavioural evaluation: scoring against hand-built logits, counts per direction, the CLI end to end."""

import json

import torch

from spatial_interp.cli import main
from spatial_interp.data.tasks import shapes_items, squares_items
from spatial_interp.evaluation import evaluate
from tests._models import tiny_model


def test_evaluate_scores_the_argmax_token(monkeypatch):
    """A model whose last-position argmax is the answer for even items and another word for odd ones."""
    vlm = tiny_model("tiny-qwen2-vl")
    items = list(squares_items(vlm.canvas))[:12]
    tok = vlm.tokenizer
    calls = []

    def fake_forward(batch):
        n = len(batch)
        logits = torch.zeros(n, batch.seq_len, len(tok))
        for j in range(n):
            i = len(calls) * 4 + j
            word = items[i].answer if i % 2 == 0 else "apple"
            # Capitalised and with a leading space must still count as the answer.
            logits[j, -1, tok.convert_tokens_to_ids(word.capitalize())] = 5.0
        calls.append(n)
        return logits

    monkeypatch.setattr(vlm, "forward", fake_forward)
    result = evaluate(vlm, items, batch_size=4, progress=False, task="squares")
    assert calls == [4, 4, 4]
    assert result.correct == [i % 2 == 0 for i in range(12)]
    assert result.accuracy == 0.5
    assert abs(result.prediction_probs[0] - torch.tensor([5.0] + [0.0] * (len(tok) - 1)).softmax(0)[0].item()) < 1e-6
    per = result.per_direction()
    assert sum(v["n"] for v in per.values()) == 12 and set(per) == {"left", "right", "above", "below"}


def test_evaluate_on_a_tiny_model_matches_a_manual_forward():
    vlm = tiny_model("tiny-gemma3")
    items = list(shapes_items(vlm.canvas))[:3]
    result = evaluate(vlm, items, batch_size=2, progress=False)
    batch = vlm.prepare([it.image for it in items], [it.prompt for it in items])
    top = vlm.forward(batch)[:, -1].argmax(-1)
    assert result.predictions == [vlm.tokenizer.decode([int(t)]) for t in top]


def test_eval_command_writes_json(tmp_path, capsys):
    out = tmp_path / "squares.json"
    code = main(["eval", "tiny-pixtral", "--task", "squares", "--limit", "8", "--batch-size", "8", "--no-progress",
                 "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert code == 0 and summary["n"] == 8 and len(saved["items"]) == 8
    assert saved["meta"]["model"]["name"] == "tiny-pixtral" and saved["meta"]["config"]["task"] == "squares"
    assert saved["meta"]["package"] == "spatial-interp"
