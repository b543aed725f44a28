"""The background worker: a second process (forked, or a fresh interpreter) whose errors reach the caller, which
never outlives its block, shares work with the caller, and works from a script without a ``__main__`` guard."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
import torch

import spatial_interp.background as background_module
from spatial_interp.background import Background, WorkerDiedError


@pytest.fixture(params=["fork", "fresh interpreter"])
def worker_kind(request, monkeypatch):
    """Both ways of starting the worker: forked (Linux) and ``python -m spatial_interp.background``."""
    if request.param == "fork" and not hasattr(os, "fork"):
        pytest.skip("no fork here")
    monkeypatch.setattr(background_module, "FORK", request.param == "fork")
    return request.param


def _answered_by_worker(task, timeout=60.0):
    """Wait (without asking for the result, which would run it here) until the worker has answered."""
    deadline = time.monotonic() + timeout
    while task.state != "answered":
        assert time.monotonic() < deadline, f"the worker did not answer within {timeout} s"
        time.sleep(0.05)
    return task.result()


def test_worker_runs_tasks_raises_their_errors_and_exit_kills_it(worker_kind):
    torch.set_num_threads(2)
    try:
        with Background() as background:
            assert torch.get_num_threads() == 2  # no worker until the first task
            pid = background.submit(os.getpid)
            assert torch.get_num_threads() == 1  # the worker has the other core
            assert _answered_by_worker(pid) != os.getpid()
            failing = background.submit(math.sqrt, -1.0)
            with pytest.raises(ValueError, match="math domain"):
                _answered_by_worker(failing)
            background.submit(time.sleep, 120)
            process = background._process
            started = time.perf_counter()
        assert time.perf_counter() - started < 10 and process.poll() is not None
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_a_task_the_worker_has_not_started_runs_in_the_caller():
    with Background() as background:
        busy = background.submit(time.sleep, 3)
        waiting = background.submit(os.getpid)
        assert waiting.result() == os.getpid() and waiting.ran_here  # the worker is still sleeping
        withdrawn = background.submit(os.getpid)
        assert withdrawn.cancel() and not busy.cancel()
        with pytest.raises(RuntimeError, match="cancelled"):
            withdrawn.result()
        assert busy.result() is None and not busy.ran_here


CALLS: list[int] = []


def _record(x):
    CALLS.append(x)
    return x * 2


def test_disabled_runs_each_task_lazily_in_the_caller_once():
    CALLS.clear()
    with Background(enabled=False) as background:
        task = background.submit(_record, 3)
        assert CALLS == []
        assert task.result() == 6 and task.result() == 6 and CALLS == [3]


def test_a_script_without_a_main_guard_gets_its_answers(tmp_path):
    """multiprocessing's spawn would re-run this script in the child and hang; this worker must not."""
    script = tmp_path / "unguarded.py"
    script.write_text("import os, time\n"
                      "from spatial_interp.background import Background\n"
                      "with Background() as background:\n"
                      "    task = background.submit(os.getpid)\n"
                      "    while task.state != 'answered':\n"
                      "        time.sleep(0.05)\n"
                      "    print(task.result() != os.getpid())\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_a_worker_that_dies_is_an_error_for_its_task_and_the_rest_run_here(worker_kind):
    with Background() as background:
        dying = background.submit(os._exit, 3)
        while dying.state == "pending":
            time.sleep(0.05)
        rest = background.submit(math.sqrt, 4.0)
        with pytest.raises(WorkerDiedError, match="exit code 3"):
            dying.result()
        assert rest.result() == 2.0 and rest.ran_here


def test_tasks_are_json_both_ways_and_anything_else_is_refused_at_submit():
    import numpy as np

    with Background(enabled=False) as background:
        with pytest.raises(TypeError, match="must be JSON"):
            background.submit(math.sqrt, object())
        with pytest.raises(TypeError, match="module-level function"):
            background.submit(lambda: 1)
        # The result is the JSON round trip wherever the task runs: tuples become lists, numpy numbers floats.
        assert background.submit(divmod, 7, 2).result() == [3, 1]
        assert background.submit(np.float32, 0.5).result() == 0.5
    with Background() as background:
        assert _answered_by_worker(background.submit(divmod, 7, 2)) == [3, 1]
        unknown = background.submit(np.float32, "not a number")
        with pytest.raises(ValueError, match="not a number"):
            _answered_by_worker(unknown)
