"""Table 5 at ``reproduce``'s default sizes: forwards, rows and time of the ordering ablation.

Work: for each variant (full grid, capped at flat id < 144) and task (squares, shapes, objects), ``ablate``
on a seeded sample of 96 items in calls of 32, as ``reproduce.ordering_ablation`` runs it (576 ablated
items). Modes:

* ``per-call``: ``ablate`` as it is called today (a reference cache per call);
* ``shared``: one ``ReferenceCache`` passed to all six calls (the change proposed for ``reproduce``).

``--package-root DIR`` runs an older export of the package instead (it has no cache: mode ``per-call``
only), to measure before and after; logits are saved and compared bit for bit with ``--compare``.

    python benchmarks/ablation_benchmark.py --mode shared --save runs/ablation-new.pt
    git worktree add runs/old-tree <older commit>      # the package as it was, for the "before" numbers
    python benchmarks/ablation_benchmark.py --package-root runs/old-tree --save runs/ablation-old.pt
    python benchmarks/ablation_benchmark.py --compare runs/ablation-old.pt runs/ablation-new.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="organism-qwen2-vl")
    parser.add_argument("--mode", choices=("per-call", "shared"), default="per-call")
    parser.add_argument("--items", type=int, default=96, help="items per task (reproduce: ablation_limit=96)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--package-root", default=None, help="import spatial_interp from this folder")
    parser.add_argument("--save", type=Path, default=None, help="save the ablated logits here (torch.save)")
    parser.add_argument("--json", type=Path, default=None, help="write forwards/rows/time here")
    parser.add_argument("--compare", nargs=2, type=Path, default=None, metavar=("A", "B"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.compare:
        a, b = (torch.load(p) for p in args.compare)
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        sys.stdout.write(f"bit-identical: {same} (max |difference| {worst:.3g} over {len(a)} calls)\n")
        return 0 if same else 1
    if args.package_root:
        sys.path.insert(0, args.package_root)
    import importlib

    import spatial_interp as si
    from spatial_interp.data import tasks
    from spatial_interp.interventions.paper import paper_ablation

    # The module, not the function the package re-exports under the same name.
    ablate_module = importlib.import_module("spatial_interp.interventions.ablate")

    vlm = si.load(args.model)
    cache = ablate_module.ReferenceCache() if args.mode == "shared" else None
    counted = {"forwards": 0, "rows": 0}
    run = ablate_module.run

    def counting_run(vlm_, batch, *a, **k):  # works on the old package too, which has no counter
        counted["forwards"] += 1
        counted["rows"] += len(batch)
        return run(vlm_, batch, *a, **k)

    ablate_module.run = counting_run
    if hasattr(ablate_module, "read_and_stop"):
        stop = ablate_module.read_and_stop

        def counting_stop(vlm_, batch, *a, **k):
            counted["forwards"] += 1
            counted["rows"] += len(batch)
            return stop(vlm_, batch, *a, **k)

        ablate_module.read_and_stop = counting_stop
    logits, start = {}, time.perf_counter()
    for variant, cap in (("full", None), ("capped", 144)):
        ablation = paper_ablation(vlm.canvas, background_cap=cap)
        for task in ("squares", "shapes", "objects"):
            items = tasks.sample_triples(getattr(tasks, f"{task}_items")(vlm.canvas), args.items, 0)
            for s in range(0, len(items), args.batch_size):
                chunk = items[s:s + args.batch_size]
                extra = {"cache": cache} if cache is not None else {}
                logits[f"{variant}/{task}/{s}"] = ablate_module.ablated_logits(
                    vlm, chunk, ablation, batch_size=args.batch_size, **extra)
    seconds = time.perf_counter() - start
    n_items = sum(v.shape[0] for v in logits.values())
    report = {"model": args.model, "mode": args.mode, "older_package": args.package_root is not None, "items": n_items,
              "seconds": seconds, **counted}
    sys.stdout.write(json.dumps(report) + "\n")
    if args.save:
        torch.save(logits, args.save)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
