"""Device check: each primitive once on a real model on a GPU — time, peak memory, dtype and placement.

For whoever has a GPU (about 5 minutes for Qwen2-VL-7B on one 80 GB card, most of it loading)::

    python benchmarks/device_check.py                                   # Qwen/Qwen2-VL-7B-Instruct, bf16, cuda
    python benchmarks/device_check.py --model google/gemma-3-4b-it --device-map auto
    python benchmarks/device_check.py --tiny                            # tiny-qwen2-vl on the CPU (a smoke test)

Steps, each timed (wall seconds; ``torch.cuda.max_memory_allocated`` after resetting the peak, summed over the
visible GPUs; on the CPU the process's max RSS instead):

1. load (``si.load(model, dtype=..., device=... | device_map=...)``); every weight's dtype and device;
2. ``engine.run`` with one read at ``lm_resid(L // 2)``: the read activation's device (asserted to be the model's)
   and dtype (reported), plus where ``PreparedChunk`` keeps its caches (source rows and prefixes are kept on
   the CPU on purpose: a whole sweep's rows can outweigh one forward's activations);
3. ``collect`` ``lm_resid(L // 2)`` of the image cells of ``--items`` squares items;
4. ``sweep`` the criss-cross object/strip swaps at 3 LM slots over ``--pairs`` pairs (``pairing="swap"``);
5. ``steer`` along 2 random directions at ``lm_resid(0)`` for α ∈ {0, 4, 8};
6. ``ablate`` with the §7.1 ordering ablation (``paper_ablation``) on ``--items`` items.

Beside the measured peak it prints ``spatial_interp.plan.plan``'s prediction for the same batch size (weights +
batch × per-item activation peak; an upper estimate for eager attention). The JSON goes to ``$OUT/device_check.json``
when ``$OUT`` is set, else ``benchmarks/results/device_check.json`` (``--json`` overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch

import spatial_interp as si
from spatial_interp.data.pairs import criss_cross_pairs
from spatial_interp.data.tasks import squares_items, task_for
from spatial_interp.interventions.ablate import ablate
from spatial_interp.interventions.collect import collect
from spatial_interp.interventions.engine import Read, count_forwards, run
from spatial_interp.interventions.examples import as_pair
from spatial_interp.interventions.metrics import answer_probs
from spatial_interp.interventions.paper import criss_cross_regions, paper_ablation
from spatial_interp.interventions.patch import Intervention, PreparedChunk
from spatial_interp.interventions.steer import random_directions, steer
from spatial_interp.interventions.sweep import sweep
from spatial_interp.plan import GIB, plan

MIB = 1024 ** 2


def cuda(device: torch.device) -> bool:
    return device.type == "cuda"


@contextmanager
def step(name: str, device: torch.device, steps: dict):
    """Time the block, count its forwards and read the CUDA peak (reset first) or the process's max RSS."""
    gpus = range(torch.cuda.device_count()) if cuda(device) else ()  # a device map may span several
    for gpu in gpus:
        torch.cuda.synchronize(gpu)
        torch.cuda.reset_peak_memory_stats(gpu)
    record: dict = {}
    start = time.perf_counter()
    with count_forwards() as seen:
        yield record
    if gpus:  # summed over the GPUs (one, unless --device-map spreads the model)
        for gpu in gpus:
            torch.cuda.synchronize(gpu)
        record["peak_allocated_gib"] = sum(torch.cuda.max_memory_allocated(gpu) for gpu in gpus) / GIB
        record["peak_reserved_gib"] = sum(torch.cuda.max_memory_reserved(gpu) for gpu in gpus) / GIB
    else:  # ru_maxrss is KiB on Linux; it never goes down, so it is the run's peak so far
        record["process_max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    record["seconds"] = time.perf_counter() - start
    record["forwards"], record["rows"] = seen.forwards, seen.rows
    steps[name] = record
    memory = (f"peak {record['peak_allocated_gib']:.2f} GiB allocated" if cuda(device)
              else f"max RSS {record['process_max_rss_gib']:.2f} GiB")
    print(f"{name:>9}: {record['seconds']:7.2f} s, {seen.forwards} forwards / {seen.rows} rows, {memory}")


def placement(vlm) -> dict:
    """dtype and device of every parameter (counts), and whether all floating weights are in the model's dtype."""
    dtypes, devices = Counter(), Counter()
    for tensor in vlm.model.parameters():
        dtypes[str(tensor.dtype).replace("torch.", "")] += 1
        devices[str(tensor.device)] += 1
    floating = {str(t.dtype) for t in vlm.model.parameters() if t.is_floating_point()}
    return {"param_dtypes": dict(dtypes), "param_devices": dict(devices),
            "all_floating_in_model_dtype": floating == {str(vlm.dtype)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Qwen/Qwen2-VL-7B-Instruct")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    placed = parser.add_mutually_exclusive_group()
    placed.add_argument("--device", default=None, help="e.g. cuda, cuda:1 (default: cuda if available)")
    placed.add_argument("--device-map", default=None, help="accelerate device map, e.g. auto")
    parser.add_argument("--tiny", action="store_true", help="tiny-qwen2-vl in float32 on the CPU (smoke test)")
    parser.add_argument("--items", type=int, default=16, help="items for collect / ablate (and steer)")
    parser.add_argument("--pairs", type=int, default=8, help="criss-cross pairs for sweep")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.tiny:
        args.model, args.dtype, args.device, args.device_map = "tiny-qwen2-vl", "float32", "cpu", None
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.device is None and args.device_map is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.json is None:
        folder = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent / "results"
        args.json = str(folder / "device_check.json")

    report: dict = {"model": args.model, "dtype": args.dtype, "device": args.device, "device_map": args.device_map,
                    "torch": torch.__version__, "spatial_interp": si.__version__, "python": platform.python_version(),
                    "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "batch_size": args.batch_size, "items": args.items, "pairs": args.pairs}
    steps: dict = {}
    report["steps"] = steps
    rss_before_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # interpreter + torch
    kwargs = {"device_map": args.device_map} if args.device_map else {"device": args.device}
    first = torch.device(args.device) if args.device else torch.device("cuda", 0)
    with step("load", first, steps):
        vlm = si.load(args.model, dtype=args.dtype, **kwargs)
    device = vlm.device
    report["placement"] = placement(vlm)
    report["model_device"], report["model_dtype"] = str(device), str(vlm.dtype)
    print(f"model on {device}, dtype {vlm.dtype}; parameters {report['placement']}")
    assert report["placement"]["all_floating_in_model_dtype"], "some weights are not in the requested dtype"

    layers = vlm.n_lm_layers
    middle = layers // 2
    items = list(squares_items(vlm.canvas))[: args.items]
    data = criss_cross_pairs(task_for("squares", vlm.canvas), vlm.canvas, n_per_direction=-(-args.pairs // 4))
    pairs = [as_pair(p) for group in zip(*data.pairs.values(), strict=False) for p in group][: args.pairs]
    regions = criss_cross_regions(vlm)

    # (2) placement of activations: an engine read, and the caches of a prepared sweep chunk.
    with step("run", device, steps) as record:
        batch = vlm.prepare([pairs[0].clean.image], [pairs[0].clean.prompt])
        positions = torch.arange(batch.seq_len)
        out = run(vlm, batch, reads=[Read(si.site.lm_resid(middle), torch.zeros_like(positions), positions)])
        read = out.reads[0]
        record.update(read_device=str(read.device), read_dtype=str(read.dtype), logits_device=str(out.logits.device))
        chunk = PreparedChunk(vlm, pairs[:2], [Intervention(si.site.lm_resid(middle), regions["object"], "object",
                                                            "swap")], answer_probs(vlm.tokenizer),
                              per_forward=1)
        record["prepared_chunk"] = {
            "source_rows_devices": sorted({str(r.device) for r in chunk.source_rows}),
            "prefix_devices": sorted({str(p.device) for p in chunk.prefixes.values()}),
            "clean_vision_features_device": None if chunk.features is None else str(chunk.features.device)}
    on_device = read.device == device
    report["activations_on_model_device"] = on_device
    print(f"      read at lm_resid({middle}): {read.dtype} on {read.device} (model on {device}); "
          f"PreparedChunk caches: {record['prepared_chunk']}")
    assert on_device, f"engine read came back on {read.device}, the model is on {device}"
    report["read_dtype_is_model_dtype"] = read.dtype == vlm.dtype  # reported, not asserted: reads may be upcast

    with tempfile.TemporaryDirectory() as tmp, step("collect", device, steps) as record:
        store = collect(vlm, items, [si.site.lm_resid(middle)], None, Path(tmp) / "acts",
                        batch_size=args.batch_size, progress=False)
        record["store"] = {"items": len(store.item_ids()), "sites": [str(x) for x in store.sites]}
    with step("sweep", device, steps) as record:
        slots = sorted({0, middle, layers})
        result = sweep(vlm, pairs, [si.site.lm_resid(s) for s in slots], regions, pairing="swap",
                       pairs_per_chunk=args.pairs, batch_size=max(args.batch_size, args.pairs), progress=False)
        record["shape"] = list(result.shape)
        record["finite"] = bool(torch.isfinite(torch.from_numpy(result.values)).all())
    with step("steer", device, steps) as record:
        result = steer(vlm, items[: args.batch_size], random_directions(vlm.d_model, 2), [0, 4, 8],
                       batch_size=args.batch_size, progress=False)
        record["shape"] = list(result.shape)
    with step("ablate", device, steps) as record:
        result = ablate(vlm, items, paper_ablation(vlm.canvas), batch_size=args.batch_size)
        record["shape"] = list(result.shape)

    # The planner's prediction next to the measured peaks.
    cost = plan(vlm, batch_size=args.batch_size, paper_sizes=False)
    per_item = cost["activations"]["peak"]
    predicted = (cost["weights_bytes"] + args.batch_size * per_item) / GIB
    if cuda(device):
        measured = max(s["peak_allocated_gib"] for s in steps.values())
        kind = "max torch.cuda.max_memory_allocated over the steps"
    else:  # the CPU figure is the process's RSS growth since before the load: weights + activations + allocator
        measured = max(s["process_max_rss_gib"] for s in steps.values()) - rss_before_load
        kind = "process max RSS minus RSS before the load (CPU)"
    report["plan"] = {"weights_gib": cost["weights_bytes"] / GIB, "activation_peak_per_item_mib": per_item / MIB,
                      "sequence_length": cost["sequence_length"],
                      "predicted_peak_gib_at_batch": predicted, "batch_size": args.batch_size}
    report["measured_peak_gib"] = measured
    report["measured_peak_kind"] = kind
    print(f"plan: weights {cost['weights_bytes'] / GIB:.3f} GiB + {args.batch_size} × "
          f"{per_item / MIB:.1f} MiB/item = {predicted:.3f} GiB predicted peak; measured "
          f"{measured:.3f} GiB ({report['measured_peak_kind']})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump(report, handle, indent=1, default=str)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
