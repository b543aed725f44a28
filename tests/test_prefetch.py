"""Prefetching keeps order, raises where the producer failed, holds at most two items, and leaves
``evaluate`` bit-identical."""

from __future__ import annotations

import threading

import pytest

from spatial_interp.data import tasks
from spatial_interp.evaluation import evaluate
from spatial_interp.prefetch import prefetched
from tests._models import tiny_model


def test_prefetched_order_threads_and_errors():
    produced, consumer = [], threading.get_ident()

    def items():
        for k in range(5):
            produced.append((k, threading.get_ident()))
            yield k

    seen = []
    for value in prefetched(items()):
        seen.append(value)
        assert len(produced) <= value + 2  # never more than one item ahead
    assert seen == list(range(5))
    assert all(ident != consumer for _, ident in produced)  # produced in the worker

    def failing():
        yield 1
        raise RuntimeError("render failed")

    out = []
    with pytest.raises(RuntimeError, match="render failed"):
        for value in prefetched(failing()):
            out.append(value)
    assert out == [1]
    assert list(prefetched(iter([3, 4]), enabled=False)) == [3, 4]


def test_evaluate_with_prefetch_equals_serial():
    vlm = tiny_model("tiny-qwen2-vl")
    items = tasks.squares_items(vlm.canvas)[:10]
    serial = evaluate(vlm, items, batch_size=4, progress=False, prefetch=False)
    overlapped = evaluate(vlm, items, batch_size=4, progress=False, prefetch=True)
    assert overlapped.predictions == serial.predictions and overlapped.prediction_probs == serial.prediction_probs
    assert overlapped.item_ids == serial.item_ids
