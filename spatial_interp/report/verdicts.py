"""The mechanism verdicts of several models side by side: table rows and a report section.

Input is what ``spatial_interp.mechanism.mechanism`` returns (plain data: ``numbers``, ``verdict``,
``planted``); every cell is read from it, so the table cannot state what was not measured.

Example:
    >>> rows = verdict_rows([])
    >>> rows[0][0]
    'measurement'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .html import Section

ROUTES = (("vision_route", "vision route"), ("lm_position_route", "LM positional route"))


def _cell(result: dict[str, Any], getter: Callable[[dict[str, Any]], str]) -> str:
    try:
        return getter(result["numbers"])
    except (KeyError, IndexError, TypeError, ValueError):
        return "—"


def route_word(present: bool | None) -> str:
    return "undetermined" if present is None else "present" if present else "absent"


def _best_lm(values: Sequence[float], control: Sequence[float]) -> str:
    # Sites are (vision_out, lm_resid(0), lm_resid(1), ...); lm_resid(0)'s image rows are vision_out's.
    best = max(range(2, len(values)), key=lambda i: values[i])
    return f"{values[best]:.3f} ({control[best]:.3f})"


MEASUREMENTS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("Table 1 sample: clean", lambda n: f"{n['knockouts']['clean']['accuracy']:.3f}"),
    ("… image rows permuted at lm_resid(0)", lambda n: f"{n['knockouts']['permuted']['accuracy']:.3f}"),
    ("… §7.1 ordering ablation", lambda n: f"{n['knockouts']['ablated']['accuracy']:.3f}"),
    ("order-blind level / paper chance", lambda n: f"{n['order_blind']:.3f} / {n['paper_chance']:.3f}"),
    ("object swap at vision_out: cf answer",
     lambda n: f"{n['swaps']['object']['cf answer'][0]:.3f} ({n['swaps']['n_pairs']} pairs)"),
    ("strip swap at vision_out: cf answer", lambda n: f"{n['swaps']['strip']['cf answer'][0]:.3f}"),
    ("object swap, best LM slot: cf answer", lambda n: f"{max(n['swaps']['object']['cf answer'][1:]):.3f}"),
    ("slot probe at vision_out, fixed layout (shuffled labels)",
     lambda n: f"{n['probes']['accuracy'][0]:.3f} ({n['probes']['shuffled_labels'][0]:.3f})"),
    ("vision_out probe: other shifts / random layouts",
     lambda n: f"{n['position_control']['shifted']['accuracy']:.3f} / "
               f"{n['position_control']['random']['accuracy']:.3f}"),
    ("… random layouts: position-only baseline / where they disagree",
     lambda n: f"{n['position_control']['random']['position_baseline']:.3f} / "
               f"{n['position_control']['random']['conflict_accuracy']:.3f}"),
    ("slot probe, best LM slot ≥ 1 (shuffled labels)",
     lambda n: _best_lm(n["probes"]["accuracy"], n["probes"]["shuffled_labels"])),
)


def verdict_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Header (``measurement`` + model names), one row per measurement, then measured and planted verdicts."""
    rows = [["measurement", *[r["numbers"]["model"] for r in results]]]
    rows += [[label, *[_cell(r, get) for r in results]] for label, get in MEASUREMENTS]
    for key, label in ROUTES:
        rows.append([f"{label}: measured", *[route_word(r["verdict"][key]["present"]) for r in results]])
        rows.append([f"{label}: planted", *["—" if not r.get("planted") else route_word(r["planted"][key])
                                             for r in results]])
    return rows


def matches_planted(result: dict[str, Any]) -> bool | None:
    """Whether the measured verdict equals the planted truth (``None``: not a planted organism)."""
    planted = result.get("planted")
    if not planted:
        return None
    return all(result["verdict"][key]["present"] == planted[key] for key, _ in ROUTES)


def verdict_text(result: dict[str, Any]) -> str:
    """One model's verdict in sentences (each built from its numbers by ``spatial_interp.mechanism``)."""
    v = result["verdict"]
    parts = [f"{result['numbers']['model']} — vision route {v['vision_route']['evidence']}",
             f"LM positional route {v['lm_position_route']['evidence']}", f"on conflict, {v['on_conflict']}"]
    match = matches_planted(result)
    if match is not None:
        parts.append("the verdict matches the planted truth" if match
                     else "the verdict does NOT match the planted truth")
    return ". ".join(parts) + "."


def verdict_section(results: Sequence[dict[str, Any]], title: str = "Which route carries order") -> Section:
    """A report section: the side-by-side table and each model's verdict in words."""
    planted = [r for r in results if r.get("planted")]
    lead = (f"{len(results)} model(s); {len(planted)} with a planted route, "
            f"{sum(bool(matches_planted(r)) for r in planted)} of which the verdict recovers. ") if planted else ""
    return Section(title, lead + " ".join(verdict_text(r) for r in results), table=verdict_rows(results))
