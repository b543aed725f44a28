"""The notebooks in notebooks/: stored without outputs, and each runs top to bottom on a clean kernel.

Execution uses nbclient (the ``dev`` extra) with one torch/BLAS thread, the working directory and
``TMPDIR`` in a temporary folder, the hub offline, and ``NDIF_API_KEY`` removed, so the NDIF cells of
``07_remote_ndif`` take their documented skip path (they need the network). Each notebook's runtime
is printed in the terminal summary; a notebook over ``BUDGET_S`` fails, so CI time stays bounded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"01_quickstart", "02_strips_vs_objects", "03_probes_and_steering", "04_ablation_and_backup",
            "07_remote_ndif", "08_planted_mechanisms"}
BUDGET_S = 180.0
"""Per notebook (each is sized for about a minute on 2 CPU cores)."""
CELL_TIMEOUT_S = 600

RUNTIMES: dict[str, float] = {}


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_every_expected_notebook_is_there() -> None:
    assert set(_ids(NOTEBOOKS)) >= EXPECTED, f"missing: {sorted(EXPECTED - set(_ids(NOTEBOOKS)))}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_stored_without_outputs(path: Path) -> None:
    """Outputs stay out of git: no outputs, no execution counts, no execution timing metadata."""
    nbformat.validate(nbformat.read(path, as_version=4))
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [(k, key) for k, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
             for key, clean in (("outputs", []), ("execution_count", None)) if cell.get(key) != clean]
    dirty += [(k, "metadata.execution") for k, cell in enumerate(nb["cells"])
              if "execution" in cell.get("metadata", {})]
    assert not dirty, (f"{path.name} has stored outputs in cells {dirty}; clear them (Jupyter: Edit → Clear "
                       "Outputs of All Cells, or `jupyter nbconvert --clear-output --inplace`) before committing")
    assert "widgets" not in nb.get("metadata", {}), f"{path.name} stores widget state; clear it"


class _RuntimeSummary:
    """Prints each executed notebook's runtime at the end of the run (also under ``-q``)."""

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if RUNTIMES:
            terminalreporter.write_line("notebook runtimes: " + ", ".join(f"{n} {s:.1f}s" for n, s in RUNTIMES.items())
                                        + f" (total {sum(RUNTIMES.values()):.1f}s)")


@pytest.fixture(scope="module")
def runtime_report(request: pytest.FixtureRequest) -> dict[str, float]:
    manager = request.config.pluginmanager
    if not any(isinstance(p, _RuntimeSummary) for p in manager.get_plugins()):
        manager.register(_RuntimeSummary(), "notebook-runtimes")
    return RUNTIMES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_executes(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime_report: dict) -> None:
    # The kernel inherits this environment.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' tempfile folders land in pytest's tmp_path
    nb = nbformat.read(path, as_version=4)
    before = sorted(NOTEBOOK_DIR.iterdir())
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{path.name} failed in a cell:\n{error}", pytrace=False)
    elapsed = time.perf_counter() - start
    runtime_report[path.stem] = elapsed

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    errors = [out for out in outputs if out.output_type == "error"]
    assert not errors, f"{path.name}: {errors}"
    shows = sum(cell.source.count(".show()") for cell in nb.cells if cell.cell_type == "code")
    figures = sum("text/html" in out.get("data", {}) and "Plotly.newPlot" in out["data"]["text/html"]
                  for out in outputs)
    # The "notebook" renderer: every figure is HTML carrying its own call into plotly.js (static fallback).
    assert figures >= shows, f"{path.name}: {shows} fig.show() calls but {figures} embedded plotly figures"
    assert sorted(NOTEBOOK_DIR.iterdir()) == before, f"{path.name} wrote into notebooks/; write to a temporary folder"
    assert elapsed <= BUDGET_S, f"{path.name} took {elapsed:.0f}s (budget {BUDGET_S:.0f}s): make it smaller"
