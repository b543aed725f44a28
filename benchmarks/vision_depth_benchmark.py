"""How the vision-depth measurements' cost grows with vision blocks × regions.

Work on ``--items`` probing images of one model:

* ``collect``: the depth profile's activations at every ``vision_block(k)`` and ``vision_out`` in one
  :func:`~spatial_interp.interventions.collect` (one clean tower forward per batch), against one collect
  per site (what reading the sites one by one would cost);
* ``flow``: :func:`~spatial_interp.interventions.attention.attention_flow` at 1 block and at every block,
  with 1, 2 and 4 named regions;
* ``knockout``: one knocked-out forward (background ↛ objects) in the first 1, 2, … blocks.

Each timing is the best of ``--repeat`` runs, one thread.

    python benchmarks/vision_depth_benchmark.py --model tiny-qwen2.5-vl --items 8
    python benchmarks/vision_depth_benchmark.py --model organism-qwen2-vl-vision --json runs/vision_depth_benchmark.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-qwen2.5-vl")
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the timings here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    import spatial_interp as si
    from spatial_interp.data import tasks
    from spatial_interp.geometry import Region
    from spatial_interp.interventions.attention import Knockout, attention_flow, run_attention
    from spatial_interp.interventions.examples import as_example
    from spatial_interp.vision_depth import objects, strips

    vlm = si.load(args.model)
    items = list(tasks.probing_items(tasks.task_for("squares", vlm.canvas), vlm.canvas, "horizontal"))[:args.items]
    n = vlm.n_vision_blocks
    sites = [si.site.vision_block(k) for k in range(n)] + [si.site.vision_out]
    out: dict = {"model": args.model, "items": len(items), "vision_blocks": n}

    def collect_all():
        with tempfile.TemporaryDirectory() as d:
            si.collect(vlm, items, sites, out=Path(d) / "a", batch_size=args.batch_size, progress=False)

    def collect_each():
        with tempfile.TemporaryDirectory() as d:
            for k, s in enumerate(sites):
                si.collect(vlm, items, [s], out=Path(d) / str(k), batch_size=args.batch_size, progress=False)

    out["collect_all_sites_s"] = best(collect_all, args.repeat)
    out["collect_site_by_site_s"] = best(collect_each, args.repeat)

    def left(example, layout):
        return Region.columns(layout.grid, 0, layout.grid.cols // 4)

    def right(example, layout):
        return Region.columns(layout.grid, 3 * layout.grid.cols // 4, layout.grid.cols)

    def outside(band):
        return lambda example, layout: band(example, layout) - objects(example, layout) - strips(example, layout)

    region_sets = {1: {"objects": objects}, 2: {"objects": objects, "strips": strips},
                   4: {"objects": objects, "strips": strips, "left": outside(left), "right": outside(right)}}
    flow = {}
    if n:
        for blocks in sorted({1, n}):
            for r, regions in region_sets.items():
                key = f"blocks={blocks},regions={r}"
                flow[key] = best(lambda regions=regions, blocks=blocks: attention_flow(
                    vlm, items, regions, blocks=range(blocks), batch_size=args.batch_size), args.repeat)
        examples = [as_example(it) for it in items]
        batch = vlm.prepare([e.image for e in examples], [e.prompt for e in examples])
        out["plain_forward_s"] = best(lambda: run_attention(vlm, batch, examples), args.repeat)
        out["knockout_s"] = {
            f"blocks={b}": best(lambda b=b: run_attention(vlm, batch, examples, [Knockout("rest", objects,
                                                                                        blocks=range(b))]),
                                args.repeat)
            for b in range(1, n + 1)}
    out["flow_s"] = flow
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
