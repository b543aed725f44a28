"""Benchmark: the full 144-cell × every-slot map by attribution patching against the exact per-cell sweep.

Model: sweep_benchmark's mid-size random Qwen2-VL (8 LM layers, d_model 256, 12×12 grid, 336 px).
Work: every cell (144, ``pairing="same"``) × {vision_out, lm_resid(0…8)} × 16 pairs.

* ``attribute``  — ``si.attribute(..., regions="cells")``: per chunk one source forward and one clean
                   forward-backward (``batch_size=16`` pairs).
* ``atp_attn``   — ``si.attribute(..., method="atp-attn")`` (the experiment's cell estimator): the same plus
                   one edited forward per chunk that computes the attention layer first reading each
                   patched row exactly (3 forwards per chunk against AtP's 2).
* ``exact``      — ``si.sweep`` over the same cells and sites, ``batch_size=64`` rows per patched forward
                   (4 interventions per forward, cached vision embeddings and clean prefixes): the exact
                   per-cell map at equal batching. Target: attribute ≥ 30× faster.
* ``ig``         — ``si.attribute(..., method="ig", steps=k, path="site")`` on the same cells: per chunk a
                   source and a clean forward, then per site one forward-backward over ``k`` copies of the
                   chunk (every cell of the site interpolated together). Cost grows as sites × ``k``.
* ``forward``    — one plain forward of the 16 clean inputs, the unit of "forward-equivalents".

Run (a few minutes on a busy 2-core machine; the exact sweep runs once)::

    python benchmarks/attribution_benchmark.py --repeats 3 --json benchmarks/results/attribution_benchmark.json

``--no-exact`` skips the exact sweep (timings and forward-equivalents only, no agreement)::

    python benchmarks/attribution_benchmark.py --no-exact --json benchmarks/results/attribution_ig_benchmark.json

Without the exact sweep, ``--check K`` checks AtP and atp-attn against exact patching on ``K`` sampled
(cell, site) points (``si.attribute(..., check=K)``, the same points for both) and ``--exact-from JSON``
takes the exact sweep's seconds from a stored full run for the speed ratios (``--no-ig`` skips IG)::

    python benchmarks/attribution_benchmark.py --no-exact --no-ig --check 288 \
        --exact-from benchmarks/results/attribution_benchmark.json \
        --json benchmarks/results/attribution_attn_benchmark.json

It prints the CPU / wall time of each, the speed ratio, attribute's cost in forward-equivalents per pair,
the clean baselines' largest difference (the same metric, so equal) and the agreement of the estimate
with the exact map (Spearman / Pearson over all 1440 × 16 entries).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_benchmark import N_PAIRS, PER_FORWARD, make_pairs, mid_size_qwen2_vl  # noqa: E402

import spatial_interp as si  # noqa: E402
from spatial_interp.interventions.attribution import attribute, cell_regions, correlations  # noqa: E402
from spatial_interp.interventions.metrics import answer_log_odds  # noqa: E402
from spatial_interp.interventions.sweep import sweep  # noqa: E402


def timed(fn):
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.process_time() - start_cpu, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of attribute and of the plain forward")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--ig-steps", type=int, default=4, help="steps of the integrated-gradients row")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact sweep (no agreement numbers)")
    parser.add_argument("--no-ig", action="store_true", help="skip the integrated-gradients row")
    parser.add_argument("--check", type=int, default=0,
                        help="with --no-exact: sampled (cell, site) points checked exactly for AtP and atp-attn")
    parser.add_argument("--check-seed", type=int, default=0)
    parser.add_argument("--exact-from", default=None,
                        help="with --no-exact: a stored full run's JSON whose exact-sweep seconds give the ratios")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vlm = mid_size_qwen2_vl()
    pairs = make_pairs()
    for p in pairs:  # make_pairs' answers are the triple; the metric reads the first against the last
        assert len(p.answers) == 3
    metric = answer_log_odds(vlm.tokenizer)
    sites = [si.site.vision_out, *[si.site.lm_resid(s) for s in range(vlm.n_lm_layers + 1)]]
    grid = vlm.prepare([pairs[0].clean.image], [pairs[0].clean.prompt]).layouts[0].grid
    cells = cell_regions(grid)
    clean_batch = vlm.prepare([p.clean.image for p in pairs], [p.clean.prompt for p in pairs])

    def ours():
        return attribute(vlm, pairs, sites, "cells", metric, batch_size=N_PAIRS, progress=False)

    def ig():
        return attribute(vlm, pairs, sites, "cells", metric, method="ig", steps=args.ig_steps, path="site",
                         batch_size=N_PAIRS, progress=False)

    def attn():
        return attribute(vlm, pairs, sites, "cells", metric, method="atp-attn", batch_size=N_PAIRS, progress=False)

    def plain():
        with torch.no_grad():
            return vlm.model(**clean_batch.inputs).logits

    runs = [("attribute", ours), ("atp_attn", attn), *([] if args.no_ig else [("ig", ig)]), ("forward", plain)]
    for _, fn in runs:  # warm-up
        fn()
    cpu: dict[str, list[float]] = {name: [] for name, _ in runs}
    wall: dict[str, list[float]] = {name: [] for name, _ in runs}
    last = {}
    for _ in range(args.repeats):
        for name, fn in runs:
            last[name], c, w = timed(fn)
            cpu[name].append(c)
            wall[name].append(w)
    estimate, estimate_attn, estimate_ig = last["attribute"], last["atp_attn"], last.get("ig")
    med = {k: statistics.median(v) for k, v in cpu.items()}
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    ig_report = None
    if estimate_ig is not None:
        ig_report = {"steps": args.ig_steps, "path": "site", "cost": estimate_ig.attrs["cost"],
                     "cpu_seconds_median": med["ig"], "wall_seconds_median": med_wall["ig"],
                     "forward_equivalents_cpu": med["ig"] / med["forward"],
                     "forward_equivalents_wall": med_wall["ig"] / med_wall["forward"]}
        print(f"ig ({args.ig_steps} steps, site path): median CPU {med['ig']:.3f} s = "
              f"{ig_report['forward_equivalents_cpu']:.2f} forward-equivalents")
    attn_report = {"method": "atp-attn", "cost": estimate_attn.attrs["cost"],
                   "atp_cost": estimate.attrs["cost"],
                   "cpu_seconds_median": med["atp_attn"], "wall_seconds_median": med_wall["atp_attn"],
                   "forward_equivalents_cpu": med["atp_attn"] / med["forward"],
                   "forward_equivalents_wall": med_wall["atp_attn"] / med_wall["forward"],
                   "over_atp_cpu": med["atp_attn"] / med["attribute"]}
    print(f"atp-attn: median CPU {med['atp_attn']:.3f} s = {attn_report['forward_equivalents_cpu']:.2f} "
          f"forward-equivalents ({attn_report['over_atp_cpu']:.2f}x AtP's {med['attribute']:.3f} s)")
    if args.no_exact:
        report = {"model": "qwen2-vl 8 layers x d_model 256, 12x12 grid",
                  "work": f"{len(cells)} cells x {len(sites)} sites x {N_PAIRS} pairs "
                          f"({len(cells) * len(sites)} points)",
                  "repeats": args.repeats, "threads": args.threads,
                  "attribute_cpu_seconds_median": med["attribute"],
                  "attribute_wall_seconds_median": med_wall["attribute"],
                  "attribute_forward_equivalents_cpu": med["attribute"] / med["forward"],
                  "forward_cpu_seconds_median": med["forward"], "forward_wall_seconds_median": med_wall["forward"],
                  "all_cpu_seconds": cpu, "all_wall_seconds": wall, "atp_attn": attn_report}
        if ig_report is not None:
            report["ig"] = ig_report
        print(f"attribute: median CPU {med['attribute']:.3f} s = {report['attribute_forward_equivalents_cpu']:.2f} "
              "forward-equivalents")
        if args.exact_from:
            stored = json.loads(Path(args.exact_from).read_text())
            exact_cpu, exact_wall = stored["cpu_seconds"]["exact"], stored["wall_seconds"]["exact"]
            report["exact_stored"] = {"from": args.exact_from, "cpu_seconds": exact_cpu, "wall_seconds": exact_wall,
                                      "agreement_atp_full_map": stored.get("agreement_with_exact")}
            report["exact_over_attribute_cpu"] = exact_cpu / med["attribute"]
            attn_report["exact_over_atp_attn_cpu"] = exact_cpu / med["atp_attn"]
            attn_report["exact_over_atp_attn_wall"] = exact_wall / med_wall["atp_attn"]
            print(f"stored exact sweep {exact_cpu:.0f} s CPU: exact / attribute = "
                  f"{report['exact_over_attribute_cpu']:.0f}, exact / atp-attn = "
                  f"{attn_report['exact_over_atp_attn_cpu']:.0f} CPU ({attn_report['exact_over_atp_attn_wall']:.0f} "
                  "wall; target >= 30)")
        if args.check:
            checked, check_cpu, check_wall = timed(lambda: attribute(
                vlm, pairs, sites, "cells", metric, method="atp-attn", batch_size=N_PAIRS, check=args.check,
                check_seed=args.check_seed, exact_batch_size=N_PAIRS * PER_FORWARD, progress=False))
            ex = checked.extras["exact"].values[0]
            mask = ~np.isnan(ex)
            attn_report["agreement_sampled"] = correlations(checked.values[0][mask], ex[mask])
            report["agreement_sampled_atp"] = correlations(checked.extras["atp"].values[0][mask], ex[mask])
            attn_report["agreement_sampled_by_site"] = {
                s: {"atp-attn": v, "atp": checked.attrs["agreement_atp"]["by_site"][s]}
                for s, v in checked.attrs["agreement"]["by_site"].items()}
            report["check"] = {**checked.attrs["check"], "cpu_seconds": check_cpu, "wall_seconds": check_wall,
                               "max_abs_exact_effect": float(np.abs(ex[mask]).max()),
                               "max_abs_estimate_diff_vs_timed_run": float(np.abs(
                                   checked.values - estimate_attn.values).max())}
            print(f"sampled check ({args.check} points x {N_PAIRS} pairs, {check_cpu:.0f} s CPU): "
                  f"atp-attn {attn_report['agreement_sampled']}, atp {report['agreement_sampled_atp']}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        return
    exact, exact_cpu, exact_wall = timed(lambda: sweep(vlm, pairs, sites, cells, metric, pairs_per_chunk=N_PAIRS,
                                                       batch_size=N_PAIRS * PER_FORWARD, progress=False))
    effect = exact.values[0] - exact.extras["clean"].values[0][None, None, :]
    agree = correlations(estimate.values[0].ravel(), effect.ravel())
    attn_report["agreement_with_exact"] = correlations(estimate_attn.values[0].ravel(), effect.ravel())
    attn_report["exact_over_atp_attn_cpu"] = exact_cpu / med["atp_attn"]
    attn_report["exact_over_atp_attn_wall"] = exact_wall / med_wall["atp_attn"]
    if ig_report is not None:
        ig_report["agreement_with_exact"] = correlations(estimate_ig.values[0].ravel(), effect.ravel())
        ig_report["exact_over_ig_cpu"] = exact_cpu / med["ig"]
    report = {
        "model": "qwen2-vl 8 layers x d_model 256, 12x12 grid",
        "work": f"{len(cells)} cells x {len(sites)} sites x {N_PAIRS} pairs ({len(cells) * len(sites)} points)",
        "metric": estimate.coords["metric"][0], "repeats": args.repeats, "threads": args.threads,
        "cpu_seconds": {"attribute_median": med["attribute"], "forward_median": med["forward"], "exact": exact_cpu},
        "wall_seconds": {"attribute_median": med_wall["attribute"], "forward_median": med_wall["forward"],
                         "exact": exact_wall},
        "all_cpu_seconds": cpu, "all_wall_seconds": wall,
        "exact_over_attribute_cpu": exact_cpu / med["attribute"],
        "exact_over_attribute_wall": exact_wall / med_wall["attribute"],
        "attribute_forward_equivalents_cpu": med["attribute"] / med["forward"],
        "attribute_forward_equivalents_wall": med_wall["attribute"] / med_wall["forward"],
        "max_abs_clean_baseline_diff": float(np.abs(estimate.extras["clean"].values
                                                    - exact.extras["clean"].values).max()),
        "agreement_with_exact": agree,
        "max_abs_exact_effect": float(np.abs(effect).max()),
        "atp_attn": attn_report,
    }
    if ig_report is not None:
        report["ig"] = ig_report
    print(f"attribute: median CPU {med['attribute']:.3f} s, wall {med_wall['attribute']:.3f} s")
    print(f"exact sweep: CPU {exact_cpu:.1f} s, wall {exact_wall:.1f} s")
    print(f"plain forward (16 pairs): median CPU {med['forward']:.3f} s")
    print(f"exact / attribute = {report['exact_over_attribute_cpu']:.1f} CPU, "
          f"{report['exact_over_attribute_wall']:.1f} wall  (target >= 30)")
    print(f"attribute = {report['attribute_forward_equivalents_cpu']:.2f} forward-equivalents (CPU; target <= 3)")
    print(f"clean baselines differ by at most {report['max_abs_clean_baseline_diff']:.2g}; "
          f"agreement: {agree}; max |exact effect| {report['max_abs_exact_effect']:.3g}")
    print(f"exact / atp-attn = {attn_report['exact_over_atp_attn_cpu']:.1f} CPU; atp-attn agreement: "
          f"{attn_report['agreement_with_exact']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
