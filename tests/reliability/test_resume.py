"""Resumable sweeps never return silently wrong numbers: content-keyed resume, locks, checksums, kill/resume."""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spatial_interp as si
from spatial_interp.geometry import Region
from spatial_interp.interventions import metrics
from spatial_interp.interventions.ablate import Ablation, Reference
from spatial_interp.interventions.collect import ActivationStore, StoreError, collect
from spatial_interp.interventions.examples import Example, PatchPair
from spatial_interp.interventions.fingerprint import content_key
from spatial_interp.interventions.patch import PreparedChunk
from spatial_interp.interventions.sweep import SweepMismatchError, sweep
from spatial_interp.results import FolderLockedError, write_npz
from tests._models import tiny_model
from tests.interventions.conftest import PROMPT, noise

ROOT = Path(__file__).resolve().parents[2]
SITES = [si.site.lm_resid(0), si.site.lm_resid(2)]
# One pair per chunk and one intervention per forward: 2 pairs -> 2 chunks of (base + 2 blocks) = 6 files.
KWARGS = dict(pairs_per_chunk=1, batch_size=1, progress=False)
CHUNK_LOG = "spatial_interp.interventions.sweep"


def _vlm():
    return tiny_model("tiny-qwen2-vl")


def _pairs(offset: int = 0, n: int = 2) -> list[PatchPair]:
    size = _vlm().adapter.native_size
    return [PatchPair(Example(noise(size, 40 + offset + i), PROMPT), Example(noise(size, 60 + offset + i), PROMPT),
                      answers=("red", "blue", "green"), id=f"p{i}") for i in range(n)]


def _regions(width: int = 4) -> dict:
    grid = _vlm().prepare([_pairs()[0].clean.image], [PROMPT]).layouts[0].grid
    return {"left": Region.columns(grid, 0, width)}


def _band(pair, layout, *, width):
    return Region.columns(layout.grid, 0, width)


def run_job(out: str, delay: float = 0.0) -> None:
    """The reference sweep, as run by the kill-and-resume subprocess (``delay`` seconds per patched forward)."""
    torch.set_num_threads(1)
    if delay:
        original = PreparedChunk.run

        def slow(self, chosen):
            time.sleep(delay)
            return original(self, chosen)

        PreparedChunk.run = slow
    sweep(_vlm(), _pairs(), SITES, _regions(), out=out, seed=0, **KWARGS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its folder and result."""
    out = tmp_path_factory.mktemp("reference") / "sweep"
    return out, sweep(_vlm(), _pairs(), SITES, _regions(), out=out, seed=0, **KWARGS)


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A finished sweep of different pairs under the same pair names (its chunks are valid files)."""
    out = tmp_path_factory.mktemp("other") / "sweep"
    sweep(_vlm(), _pairs(offset=100), SITES, _regions(), out=out, seed=0, **KWARGS)
    return out


@pytest.fixture
def copy(reference, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    return out


@pytest.fixture
def counted(monkeypatch):
    """Counts patched forwards and model forwards."""
    calls = {"run": 0, "forward": 0}
    original = PreparedChunk.run

    def run(self, chosen):
        calls["run"] += 1
        return original(self, chosen)

    monkeypatch.setattr(PreparedChunk, "run", run)
    handle = _vlm().model.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    yield calls
    handle.remove()


def _top1(which: int):
    return metrics.top1(_vlm().tokenizer, which=which)


def _blank(color: str) -> Ablation:
    size = _vlm().adapter.native_size

    def references(example, layout):
        return [Reference(Region.columns(layout.grid, 0, 2), Example(Image.new("RGB", size, color), example.prompt))]

    return Ablation(references)


CHANGES = {
    "seed": (dict(seed=1), "seed"),
    "pairs_content": (dict(pairs=lambda: _pairs(offset=100)), "pairs_content"),
    "region_cells": (dict(regions=lambda: _regions(width=5)), r"region_contents \('left'\)"),
    "region_partial": (dict(regions=lambda: {"left": functools.partial(_band, width=4)}), "region_contents"),
    "metric_parameter": (dict(metric=lambda: _top1(2)), "metric_params"),
    "ablation": (dict(ablation=lambda: _blank("white")), "ablation_spec"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_content_refuses_before_any_forward(reference, copy, counted, change):
    overrides, field = CHANGES[change]
    args = dict(pairs=_pairs(), regions=_regions(), metric=None, seed=0, ablation=None)
    args.update({k: v() if callable(v) else v for k, v in overrides.items()})
    with pytest.raises(SweepMismatchError, match=field) as error:
        sweep(_vlm(), args["pairs"], SITES, args["regions"], args["metric"], out=copy, seed=args["seed"],
              ablation=args["ablation"], **KWARGS)
    assert "force=True" in str(error.value) and "out=" in str(error.value)
    assert counted["forward"] == 0


def test_metric_parameter_changes_the_key():
    assert content_key(_top1(0)) == content_key(_top1(0))
    assert content_key(_top1(0)) != content_key(_top1(2))
    combined = metrics.combine({"p": metrics.answer_probs(_vlm().tokenizer), "t": _top1(1)})
    assert content_key(combined) != content_key(metrics.combine({"p": metrics.answer_probs(_vlm().tokenizer),
                                                                  "t": _top1(0)}))


def test_ablation_key_follows_its_closure():
    assert content_key(_blank("white")) == content_key(_blank("white"))
    assert content_key(_blank("white")) != content_key(_blank("black"))
    assert content_key(Ablation(_blank("white").references, si.site.lm_resid(1))) != content_key(_blank("white"))


def test_paper_region_key_follows_strip_widths():
    from spatial_interp.interventions.paper import strip_swap

    assert content_key(strip_swap("qwen2_vl", [4, 4, 4])) == content_key(strip_swap("qwen2_vl", [4, 4, 4]))
    assert content_key(strip_swap("qwen2_vl", [4, 4, 4])) != content_key(strip_swap("qwen2_vl", [3, 6, 3]))


def test_callable_region_keys_follow_arguments_and_code():
    assert content_key(functools.partial(_band, width=4)) == content_key(functools.partial(_band, width=4))
    assert content_key(functools.partial(_band, width=4)) != content_key(functools.partial(_band, width=5))
    first = lambda pair, layout: Region.columns(layout.grid, 0, 2)  # noqa: E731
    second = lambda pair, layout: Region.columns(layout.grid, 0, 3)  # noqa: E731
    assert content_key(first) != content_key(second)  # same qualname, different code


def test_force_recomputes_and_equals_a_fresh_run(reference, other, tmp_path, counted):
    out = tmp_path / "forced"
    shutil.copytree(other, out)
    result = sweep(_vlm(), _pairs(), SITES, _regions(), out=out, seed=0, force=True, **KWARGS)
    assert np.array_equal(result.values, reference[1].values)
    assert np.array_equal(result.extras["clean"].values, reference[1].extras["clean"].values)
    assert counted["run"] == 4  # everything recomputed
    again = sweep(_vlm(), _pairs(), SITES, _regions(), out=out, seed=0, **KWARGS)
    assert counted["run"] == 4 and np.array_equal(again.values, reference[1].values)  # and now it resumes
    sweep(_vlm(), _pairs(), SITES, _regions(), out=out, seed=0, force=True, **KWARGS)
    assert counted["run"] == 8  # force starts over even when the folder holds this very sweep


def _truncate(path: Path, other: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path, other: Path) -> None:
    path.write_bytes(b"")


def _bit_flip(path: Path, other: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _tamper(path: Path, other: Path) -> None:
    """A well-formed file whose values no longer match its checksum."""
    with np.load(path) as data:
        arrays = {k: np.array(data[k]) for k in data.files}
    arrays["values"] = arrays["values"] + 1
    write_npz(path, arrays)


def _foreign(path: Path, other: Path) -> None:
    shutil.copyfile(other / "chunks" / path.name, path)


def _moved(path: Path, other: Path) -> None:
    shutil.copyfile(path.with_name("c00001_f00001.npz"), path)


DAMAGE = {"truncated": (_truncate, "unreadable"), "empty": (_empty, "unreadable"),
          "bit_flip": (_bit_flip, "unreadable|checksum"), "tampered": (_tamper, "checksum"),
          "foreign": (_foreign, "another sweep"), "moved": (_moved, "written as")}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_chunk_is_logged_and_recomputed(reference, other, copy, counted, caplog, damage):
    hurt, reason = DAMAGE[damage]
    target = copy / "chunks" / "c00000_f00001.npz"
    hurt(target, other)
    with caplog.at_level(logging.WARNING, logger=CHUNK_LOG):
        result = sweep(_vlm(), _pairs(), SITES, _regions(), out=copy, seed=0, **KWARGS)
    assert np.array_equal(result.values, reference[1].values)
    assert counted["run"] == 1  # only the damaged forward
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("c00000_f00001.npz" in m for m in warned), warned
    assert any(re.search(reason, m) for m in warned), warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=CHUNK_LOG):
        sweep(_vlm(), _pairs(), SITES, _regions(), out=copy, seed=0, **KWARGS)
    assert counted["run"] == 1 and not caplog.records  # the rewritten chunk is trusted again


def test_damaged_base_is_recomputed(reference, copy, counted, caplog):
    _truncate(copy / "chunks" / "c00001_base.npz", copy)
    with caplog.at_level(logging.WARNING, logger=CHUNK_LOG):
        result = sweep(_vlm(), _pairs(), SITES, _regions(), out=copy, seed=0, **KWARGS)
    assert np.array_equal(result.values, reference[1].values)
    assert np.array_equal(result.extras["source"].values, reference[1].extras["source"].values)
    assert counted["run"] == 0  # the chunk's blocks were intact
    assert any("c00001_base.npz" in r.getMessage() for r in caplog.records)


def test_stale_temporary_files_are_removed(reference, copy, counted):
    stale = [copy / "chunks" / ".c00000_f00000.npz.k1ll3d.tmp", copy / ".result.npz.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    result = sweep(_vlm(), _pairs(), SITES, _regions(), out=copy, seed=0, **KWARGS)
    assert not any(p.exists() for p in stale)
    assert counted["run"] == 0 and np.array_equal(result.values, reference[1].values)


def _hold_lock(folder: Path):
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_second_writer_fails_at_once(copy, tmp_path, counted):
    fd = _hold_lock(copy)
    try:
        with pytest.raises(FolderLockedError, match=str(copy)):
            sweep(_vlm(), _pairs(), SITES, _regions(), out=copy, seed=0, **KWARGS)
        acts = tmp_path / "acts"
        acts.mkdir()
        fd2 = _hold_lock(acts)
        try:
            with pytest.raises(FolderLockedError, match="collect"):
                collect(_vlm(), [p.clean for p in _pairs()], [SITES[0].last_token], out=acts, progress=False)
        finally:
            os.close(fd2)
    finally:
        os.close(fd)
    assert counted["forward"] == 0
    sweep(_vlm(), _pairs(), SITES, _regions(), out=copy, seed=0, **KWARGS)  # released: works again


def test_missing_manifest_with_chunks_refuses(reference, copy, counted):
    (copy / "sweep.json").unlink()
    with pytest.raises(SweepMismatchError, match="no sweep.json"):
        sweep(_vlm(), _pairs(), SITES, _regions(), out=copy, seed=0, **KWARGS)
    assert counted["forward"] == 0
    result = sweep(_vlm(), _pairs(), SITES, _regions(), out=copy, seed=0, force=True, **KWARGS)
    assert counted["run"] == 4 and np.array_equal(result.values, reference[1].values)


@pytest.mark.parametrize("files_before_kill", [1, 3])
def test_kill_and_resume_is_bit_identical(reference, tmp_path, counted, files_before_kill):
    """SIGKILL after the first chunk file, and again later in the run (a chunk and the second chunk's base)."""
    out = tmp_path / "killed"
    code = "import sys; from tests.reliability.test_resume import run_job; run_job(sys.argv[1], delay=1.0)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "chunks").glob("*.npz"))) < files_before_kill:
            assert job.poll() is None, job.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the sweep subprocess wrote no chunk in time"
            time.sleep(0.02)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        job.stderr.close()
    assert job.returncode == -signal.SIGKILL
    assert not (out / "result.json").exists()
    done = len(list((out / "chunks").glob("*.npz")))
    result = sweep(_vlm(), _pairs(), SITES, _regions(), out=out, seed=0, **KWARGS)
    assert 0 < counted["run"] <= 4 and done < 6
    assert np.array_equal(result.values, reference[1].values)
    assert np.array_equal(result.extras["clean"].values, reference[1].extras["clean"].values)
    assert np.array_equal(result.extras["source"].values, reference[1].extras["source"].values)


def test_collect_lock_checksums_and_refusal(tmp_path):
    items = [p.clean for p in _pairs()]
    out = tmp_path / "acts"
    store = collect(_vlm(), items, [SITES[1].last_token], out=out, batch_size=1, progress=False)
    store.verify()
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(StoreError, match="delete"):
        collect(_vlm(), items, [SITES[1].last_token], out=out, progress=False)
    chunk = out / str(SITES[1].last_token) / "chunk_000001.npy"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="chunk_000001.npy"):
        ActivationStore(out).verify()
