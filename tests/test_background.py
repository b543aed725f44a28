"""The background worker: a spawned process whose errors reach the caller and which never outlives its block."""

from __future__ import annotations

import math
import time

import pytest
import torch

from spatial_interp.background import Background


def test_worker_errors_reach_the_caller_and_exit_terminates_it():
    torch.set_num_threads(2)
    with Background() as background:
        assert background.submit(math.sqrt, 16.0).result() == 4.0
        with pytest.raises(ValueError, match="math domain"):
            background.submit(math.sqrt, -1.0).result()
        assert torch.get_num_threads() == 1  # the worker has the other core
        background.submit(time.sleep, 120)
        process = background._pool._pool[0]
        started = time.perf_counter()
    assert time.perf_counter() - started < 10 and not process.is_alive()
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)


def test_disabled_runs_each_task_lazily_in_the_caller_once():
    calls = []

    def record(x):
        calls.append(x)
        return x * 2

    with Background(enabled=False) as background:
        task = background.submit(record, 3)
        assert calls == []
        assert task.result() == 6 and task.result() == 6 and calls == [3]
