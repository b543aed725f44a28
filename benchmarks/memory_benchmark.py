"""Peak resident memory of each paper experiment for N and 10·N items: it must not grow with items.

Each (experiment, size) runs in a fresh subprocess on tiny-gemma3 (896 px canvas, 16×16 grid), reading
a lazy ``ItemSet``, and reports its peak RSS (``ru_maxrss``). Target: ``peak(10N) / peak(N) <= 1.2``.
``sweep`` is the region-patching sweep (``si.sweep``) on N distinct criss-cross pairs (lazily rendered
``data.pairs.Pair`` objects) over ``[vision_out, lm_resid(1)]`` × the paper's object/strip swaps, with
``out=`` a temporary folder; its chunks hold ``batch-size // 2`` pairs, two interventions per forward.

    python benchmarks/memory_benchmark.py --n 24 --json benchmarks/results/memory_benchmark.json

N is three batches (the default 24 at batch 8) so that both sizes hold what a streaming run holds at
its steadiest: the chunk in the model and the next one, prefetched. With N one batch there is nothing
to prefetch at N, and the ratio would measure that fixed second chunk, not growth with items.

``--package-root DIR`` imports ``spatial_interp`` from ``DIR`` instead (e.g. an exported older commit,
``mkdir -p runs/old && git archive HEAD spatial_interp | tar -x -C runs/old``), to measure before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

EXPERIMENTS = ("table1", "collect", "steer", "amplification", "ablate", "sweep")
MODEL = "tiny-gemma3"


def child(experiment: str, n: int, batch_size: int) -> dict:
    """Run one experiment on ``n`` lazily rendered items; return its peak RSS and time."""
    import resource
    import tempfile

    import torch

    torch.set_num_threads(1)
    import spatial_interp as si
    from spatial_interp.data import tasks

    sys.stderr.write(f"spatial_interp from {Path(si.__file__).parent}\n")

    vlm = si.load(MODEL)
    task = tasks.task_for("squares", vlm.canvas)
    if experiment == "sweep":
        from spatial_interp.data.pairs import criss_cross_pairs

        # Distinct (direction, tuple) pairs, ceil(n / 4) per direction, the first n kept; lazy: rendered when read.
        items = list(criss_cross_pairs(task, vlm.canvas, n_per_direction=-(-n // 4), seed=0, keep=None))[:n]
        if len(items) != n or len({(p.direction, p.elements) for p in items}) != n:
            raise RuntimeError(f"could not draw {n} distinct criss-cross pairs")
    else:
        items = tasks.random_layout_items(task, vlm.canvas, n, seed=0)  # lazy: rendered when indexed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if experiment == "table1":
        from spatial_interp.evaluation import evaluate

        evaluate(vlm, items, batch_size=batch_size, progress=False)
    elif experiment == "collect":
        with tempfile.TemporaryDirectory() as out:
            si.collect(vlm, items, [si.site.vision_out, si.site.lm_resid(1)], out=Path(out) / "acts",
                       batch_size=batch_size, progress=False)
    elif experiment in ("steer", "amplification"):
        from spatial_interp.interventions.steer import amplification, random_directions, steer

        w = random_directions(vlm.d_model, 2, seed=0)
        if experiment == "steer":
            steer(vlm, items, w, [0, 1, 2], batch_size=batch_size, progress=False)
        else:
            amplification(vlm, items, w, [0, 1, 2], batch_size=batch_size, progress=False)
    elif experiment == "ablate":
        from spatial_interp.interventions.ablate import ablate
        from spatial_interp.interventions.paper import paper_ablation

        ablate(vlm, items, paper_ablation(vlm.canvas), batch_size=batch_size)
    elif experiment == "sweep":
        from spatial_interp.interventions.metrics import top1
        from spatial_interp.interventions.paper import criss_cross_regions

        with tempfile.TemporaryDirectory() as out:
            result = si.sweep(vlm, items, [si.site.vision_out, si.site.lm_resid(1)], criss_cross_regions(vlm),
                              top1(vlm.tokenizer, 0), pairing="swap", out=Path(out) / "sweep",
                              pairs_per_chunk=max(1, batch_size // 2), batch_size=batch_size, progress=False)
        if result.shape != (1, 2, 2, n):
            raise RuntimeError(f"sweep returned shape {result.shape}, expected (1, 2, 2, {n})")
    else:
        raise ValueError(f"unknown experiment {experiment!r}; choose from {EXPERIMENTS}")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"experiment": experiment, "n": n, "peak_rss_mib": peak / 1024, "rss_before_mib": before / 1024,
            "seconds": seconds}


def measure(experiment: str, n: int, batch_size: int, package_root: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if package_root:
        env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", experiment, "--n", str(n),
               "--batch-size", str(batch_size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{experiment} n={n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=24, help="small size N (the large one is 10·N); at least 3 batches")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--package-root", default=None, help="import spatial_interp from this folder")
    parser.add_argument("--target", type=float, default=1.2)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        parser.error("--n and --batch-size must be >= 1")
    if args.child:
        sys.stdout.write(json.dumps(child(args.child, args.n, args.batch_size)) + "\n")
        return 0
    rows, ok = [], True
    for experiment in args.experiments:
        small = measure(experiment, args.n, args.batch_size, args.package_root)
        large = measure(experiment, 10 * args.n, args.batch_size, args.package_root)
        ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
        ok &= ratio <= args.target
        rows.append({"experiment": experiment, "small": small, "large": large, "ratio": ratio,
                     "within_target": ratio <= args.target})
        sys.stdout.write(f"{experiment:14s} N={args.n:4d} {small['peak_rss_mib']:8.1f} MiB   10N={10 * args.n:4d} "
                         f"{large['peak_rss_mib']:8.1f} MiB   ratio {ratio:.3f}   "
                         f"({small['seconds']:.1f} s / {large['seconds']:.1f} s)\n")
        sys.stdout.flush()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"model": MODEL, "batch_size": args.batch_size, "target": args.target,
                  "older_package": args.package_root is not None, "rows": rows}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
