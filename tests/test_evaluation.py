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


def _jpeg(path, color, size=(64, 48)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")


def test_eval_whatsup_end_to_end_from_fixture_photos(tmp_path, capsys):
    """What'sUp composites from JPEGs in the real naming layout; single-token filter by the model's tokenizer."""
    from spatial_interp.commands.eval import task_items
    from spatial_interp.data.whatsup import WHATSUP_CANDIDATES

    root = tmp_path / "controlled_images"
    for ref, names in WHATSUP_CANDIDATES.items():
        for k, obj in enumerate(names):
            for relation in ("left_of", "right_of"):
                _jpeg(root / f"{obj}_{relation}_{ref}.jpeg", (5 * k % 255, 90, 200))
    vlm = tiny_model("tiny-qwen2-vl")
    tok = vlm.tokenizer

    def single(word):  # one known token, plain and Capitalised (the tiny vocabulary maps others to <unk>)
        pieces = [tok.tokenize(w) for w in (word, word.capitalize())]
        return all(len(p) == 1 and p[0] != tok.unk_token for p in pieces)

    kept = {ref: [n for n in names if single(n)] for ref, names in WHATSUP_CANDIDATES.items()}
    assert "toy-cactus" not in kept["chair"] and "mug" in kept["chair"]
    items = task_items(vlm, "whatsup", root)
    assert len(items) == sum(2 * len(v) * (len(v) - 1) for v in kept.values())
    code = main(["eval", "tiny-qwen2-vl", "--task", "whatsup", "--data", str(root), "--no-progress", "--json",
                 "--limit", "12"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["n"] == 12 and set(summary["per_direction"]) == {"left", "right"}


def test_eval_coco_end_to_end_from_fixture_folder(tmp_path, capsys):
    """The genuine What'sUp COCO excerpt, with generated val2017 images and an instances file."""
    import shutil

    from spatial_interp.data.coco import load_coco_qa

    excerpt = "tests/data/fixtures/coco_qa_two_obj.excerpt.json"
    shutil.copy(excerpt, tmp_path / "coco_qa_two_obj.json")
    records = load_coco_qa(excerpt)
    for image_id in {r.image_id for r in records}:
        _jpeg(tmp_path / "val2017" / f"{image_id:012d}.jpg", (120, 120, 120), size=(96, 64))
    code = main(["eval", "tiny-gemma3", "--task", "coco", "--data", str(tmp_path), "--no-progress", "--json",
                 "--batch-size", "8"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["n"] == 2 * len(records)  # both option orders (lr, rl)
    assert summary["meta"]["config"]["task"] == "coco"


def test_eval_whatsup_without_data_is_a_clear_error():
    import pytest

    with pytest.raises(SystemExit, match="needs --data"):
        main(["eval", "tiny-qwen2-vl", "--task", "whatsup"])
