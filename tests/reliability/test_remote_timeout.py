"""Remote traces have a deadline: a request that is never answered fails clearly instead of hanging."""

from __future__ import annotations

import time

import numpy as np
import pytest

import spatial_interp as si
from spatial_interp.interventions.examples import Example
from spatial_interp.models import remote
from tests._models import tiny_model
from tests.interventions.conftest import PROMPT, noise


def test_deadline_passes_results_and_errors_through():
    assert remote.within_time(lambda a, b: a + b, (2, 3), 5.0) == 5
    with pytest.raises(KeyError, match="boom"):
        remote.within_time(lambda: {}["boom"], (), 5.0)


def test_a_request_that_never_answers_times_out():
    start = time.perf_counter()
    with pytest.raises(remote.RemoteTimeoutError, match=remote.TIMEOUT_ENV):
        remote.within_time(time.sleep, (30,), 0.2)
    assert time.perf_counter() - start < 5


def test_timeout_setting(monkeypatch):
    monkeypatch.delenv(remote.TIMEOUT_ENV, raising=False)
    assert remote.remote_timeout() == remote.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(remote.TIMEOUT_ENV, "12.5")
    assert remote.remote_timeout() == 12.5
    for bad in ("soon", "0", "-3", "nan", "inf"):
        monkeypatch.setenv(remote.TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=remote.TIMEOUT_ENV):
            remote.remote_timeout()


def test_serialised_traces_run_under_the_deadline(monkeypatch):
    """remote="local" goes through the same deadline thread as remote=True: results equal local ones."""
    vlm = tiny_model("tiny-qwen2-vl")
    items = [Example(noise(vlm.adapter.native_size, 750 + i), PROMPT, answer="red") for i in range(2)]
    calls = []
    real = remote.within_time
    monkeypatch.setattr(remote, "within_time", lambda fn, args, s: calls.append(s) or real(fn, args, s))
    local = si.permute_image_rows(vlm, items, seed=1)
    serialised = si.permute_image_rows(vlm, items, seed=1, remote="local")
    assert calls, "the serialised path did not go through the deadline"
    np.testing.assert_allclose(local.values, serialised.values)
