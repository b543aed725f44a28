"""Overlapped preprocessing: Table 1's evaluation with the next chunk prepared in a worker thread vs serially.

Measures, on one model, the per-item cost of rendering, the processor and the forward (serial, one
torch thread), then the wall time of ``evaluate`` over the same items with ``prefetch=False`` and
``prefetch=True`` (alternating, ``--repeat`` times each; results checked identical). The ideal saving
is min(preprocessing, forward) / (preprocessing + forward): on a GPU machine, where the forward is
short, preprocessing is the larger part and the saving is bounded by the forward instead.

    python benchmarks/prefetch_benchmark.py --model organism-qwen2-vl-dual --items 480
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import spatial_interp as si
from spatial_interp.data import tasks
from spatial_interp.evaluation import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="organism-qwen2-vl-dual")
    parser.add_argument("--items", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    vlm = si.load(args.model)
    items = tasks.squares_items(vlm.canvas)[: args.items]
    render = process = forward = 0.0
    for start in range(0, len(items), args.batch_size):
        t0 = time.perf_counter()
        chunk = [items[i] for i in range(start, min(start + args.batch_size, len(items)))]
        images = [c.image for c in chunk]
        t1 = time.perf_counter()
        batch = vlm.prepare(images, [c.prompt for c in chunk])
        t2 = time.perf_counter()
        with torch.no_grad():
            vlm.forward(batch)
        t3 = time.perf_counter()
        render, process, forward = render + t1 - t0, process + t2 - t1, forward + t3 - t2
    n = len(items)
    walls: dict[bool, list[float]] = {False: [], True: []}
    results = {}
    for _ in range(args.repeat):
        for prefetch in (False, True):
            started = time.perf_counter()
            results[prefetch] = evaluate(vlm, items, batch_size=args.batch_size, progress=False, prefetch=prefetch)
            walls[prefetch].append(time.perf_counter() - started)
    assert results[True].predictions == results[False].predictions, "prefetching changed the predictions"
    pre, fwd = (render + process) / n, forward / n
    record = {"model": args.model, "items": n, "batch_size": args.batch_size,
              "per_item_ms": {"render": 1e3 * render / n, "processor": 1e3 * process / n, "forward": 1e3 * fwd},
              "ideal_saving": min(pre, fwd) / (pre + fwd),
              "serial_s": statistics.median(walls[False]), "prefetch_s": statistics.median(walls[True])}
    record["measured_saving"] = 1 - record["prefetch_s"] / record["serial_s"]
    sys.stdout.write(json.dumps(record, indent=1) + "\n")
    out = Path(__file__).parent / "results" / "prefetch_benchmark.json"
    out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
