"""Benchmark: the full 144-cell × every-slot map by attribution patching against the exact per-cell sweep.

Model: sweep_benchmark's mid-size random Qwen2-VL (8 LM layers, d_model 256, 12×12 grid, 336 px).
Work: every cell (144, ``pairing="same"``) × {vision_out, lm_resid(0…8)} × 16 pairs.

* ``attribute``  — ``si.attribute(..., regions="cells")``: per chunk one source forward and one clean
                   forward-backward (``batch_size=16`` pairs).
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

    def plain():
        with torch.no_grad():
            return vlm.model(**clean_batch.inputs).logits

    ours(), ig(), plain()  # warm-up
    cpu = {"attribute": [], "ig": [], "forward": []}
    wall = {"attribute": [], "ig": [], "forward": []}
    for _ in range(args.repeats):
        for name, fn in (("attribute", ours), ("ig", ig), ("forward", plain)):
            _, c, w = timed(fn)
            cpu[name].append(c)
            wall[name].append(w)
    estimate, estimate_ig = ours(), ig()
    med = {k: statistics.median(v) for k, v in cpu.items()}
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    ig_report = {"steps": args.ig_steps, "path": "site", "cost": estimate_ig.attrs["cost"],
                 "cpu_seconds_median": med["ig"], "wall_seconds_median": med_wall["ig"],
                 "forward_equivalents_cpu": med["ig"] / med["forward"],
                 "forward_equivalents_wall": med_wall["ig"] / med_wall["forward"]}
    print(f"ig ({args.ig_steps} steps, site path): median CPU {med['ig']:.3f} s = "
          f"{ig_report['forward_equivalents_cpu']:.2f} forward-equivalents")
    if args.no_exact:
        report = {"model": "qwen2-vl 8 layers x d_model 256, 12x12 grid", "repeats": args.repeats,
                  "threads": args.threads, "attribute_cpu_seconds_median": med["attribute"],
                  "attribute_forward_equivalents_cpu": med["attribute"] / med["forward"],
                  "forward_cpu_seconds_median": med["forward"], "all_cpu_seconds": cpu, "all_wall_seconds": wall,
                  "ig": ig_report}
        print(f"attribute: median CPU {med['attribute']:.3f} s = {report['attribute_forward_equivalents_cpu']:.2f} "
              "forward-equivalents")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        return
    exact, exact_cpu, exact_wall = timed(lambda: sweep(vlm, pairs, sites, cells, metric, pairs_per_chunk=N_PAIRS,
                                                       batch_size=N_PAIRS * PER_FORWARD, progress=False))
    effect = exact.values[0] - exact.extras["clean"].values[0][None, None, :]
    agree = correlations(estimate.values[0].ravel(), effect.ravel())
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
        "ig": ig_report,
    }
    print(f"attribute: median CPU {med['attribute']:.3f} s, wall {med_wall['attribute']:.3f} s")
    print(f"exact sweep: CPU {exact_cpu:.1f} s, wall {exact_wall:.1f} s")
    print(f"plain forward (16 pairs): median CPU {med['forward']:.3f} s")
    print(f"exact / attribute = {report['exact_over_attribute_cpu']:.1f} CPU, "
          f"{report['exact_over_attribute_wall']:.1f} wall  (target >= 30)")
    print(f"attribute = {report['attribute_forward_equivalents_cpu']:.2f} forward-equivalents (CPU; target <= 3)")
    print(f"clean baselines differ by at most {report['max_abs_clean_baseline_diff']:.2g}; "
          f"agreement: {agree}; max |exact effect| {report['max_abs_exact_effect']:.3g}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
