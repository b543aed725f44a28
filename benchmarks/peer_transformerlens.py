"""Peer benchmark: ``si.sweep`` against TransformerLens 4.x's ``TransformerBridge`` on the same sweep.

Work, per model: the criss-cross swap regions (``object`` and ``strip`` from
``spatial_interp.interventions.paper.criss_cross_regions``) at every LM residual slot ``lm_resid(0…L)``,
over 16 distinct criss-cross pairs (``spatial_interp.data.pairs.criss_cross_pairs`` on the squares task),
metric = answer probabilities (clean answer, middle, cf answer) at the last position.

* ``si_sweep`` — ``si.sweep(..., pairing="swap", pairs_per_chunk=16, batch_size=64)``.
* ``tl``       — TransformerLens idiom on a bridge booted from a copy of the same HF model: one
                 ``run_with_cache`` of the 16 source inputs (``names_filter`` = the residual hooks), then
                 ``run_with_hooks`` forwards of the clean batch stacked up to 4 times (64 rows, the same cap
                 as the sweep's ``batch_size``), replica ``r`` patching its own (slot, region) through a hook on
                 ``blocks.{s}.hook_in`` (slot ``s < L``) or ``blocks.{L-1}.hook_out`` (slot ``L``). TL has no
                 cached-prefix start, so its forwards mix slots (4 interventions each); the sweep's forwards hold
                 one slot each (2 regions) and start at that slot. Both run every patched row once.

Both sides use eager attention (the bridge forces it on its model; the sweep's model is switched to match),
so the results agree to float rounding: they are asserted equal (``atol=1e-4`` on the metric) before any
timing. Token positions of the regions come from ``spatial_interp``'s layouts (``patch_indices``) for both:
TransformerLens has no notion of image cells, so this is the part a TL user would write by hand.

Run::

    pip install -e '.[bench]'        # transformer_lens
    python benchmarks/peer_transformerlens.py --repeats 5 --json benchmarks/results/peer_transformerlens.json

Without TransformerLens (or when its bridge cannot boot a model) the script says so and skips that model.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bridge otherwise asks the Hub for our local tokenizer

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

import spatial_interp as si  # noqa: E402
from spatial_interp.data.pairs import criss_cross_pairs  # noqa: E402
from spatial_interp.data.tasks import task_for  # noqa: E402
from spatial_interp.interventions.engine import repeat_batch  # noqa: E402
from spatial_interp.interventions.examples import as_pair, resolve_region  # noqa: E402
from spatial_interp.interventions.metrics import answer_probs  # noqa: E402
from spatial_interp.interventions.paper import criss_cross_regions  # noqa: E402
from spatial_interp.interventions.patch import Intervention, group_forwards, patch_indices  # noqa: E402
from spatial_interp.interventions.sweep import sweep  # noqa: E402

N_PAIRS, PER_FORWARD = 16, 4
MODELS = ("tiny-llava", "tiny-gemma3")


def make_pairs(vlm, n: int = N_PAIRS):
    """``n`` criss-cross pairs with distinct clean and distinct source images."""
    per_direction = -(-n // 4) + 2
    data = criss_cross_pairs(task_for("squares", vlm.canvas), vlm.canvas, n_per_direction=per_direction)
    pairs, seen = [], set()
    for group in zip(*data.pairs.values(), strict=False):  # alternate directions (left, right, above, below)
        for pair in map(as_pair, group):
            key = (pair.clean.image.tobytes(), pair.source.image.tobytes())
            if key[0] in seen or key[1] in seen:
                continue
            seen.update(key)
            pairs.append(pair)
    if len(pairs) < n:
        raise RuntimeError(f"only {len(pairs)} distinct criss-cross pairs")
    return pairs[:n]


def boot_bridge(vlm):
    """A TransformerBridge on a deep copy of ``vlm.model`` (so the sweep's model stays as it was), or a reason."""
    if importlib.util.find_spec("transformer_lens") is None:
        return None, "transformer_lens is not installed (pip install -e '.[bench]')"
    try:
        from transformer_lens.model_bridge.sources.transformers.source import boot

        hf = copy.deepcopy(vlm.model)
        hf.config.architectures = [type(hf).__name__]  # models built from a config carry none
        tokenizer = copy.deepcopy(vlm.tokenizer)  # never used to tokenise: inputs come from our processor
        tokenizer.init_kwargs.update(name_or_path=vlm.info.name, add_bos_token=True)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            bridge = boot(vlm.info.name, hf_model=hf, tokenizer=tokenizer, device="cpu", dtype=vlm.dtype)
        bridge.eval()
        return bridge, None
    except Exception as error:  # noqa: BLE001 - any failure means "TL cannot run this model": skip it
        text = str(error) if len(str(error)) <= 200 else str(error)[:200] + " …"  # TL lists every architecture
        return None, f"TransformerBridge could not boot {vlm.info.name}: {type(error).__name__}: {text}"


def tl_hook_name(slot: int, n_layers: int) -> str:
    return f"blocks.{slot}.hook_in" if slot < n_layers else f"blocks.{n_layers - 1}.hook_out"


@torch.no_grad()
def tl_sweep(bridge, vlm, pairs, slots, regions, metric) -> torch.Tensor:
    """The sweep with TransformerLens's run_with_cache / run_with_hooks; ``(intervention, pair, metric)``."""
    n, n_layers = len(pairs), vlm.n_lm_layers
    source = vlm.prepare([p.source.image for p in pairs], [p.source.prompt for p in pairs])
    clean = vlm.prepare([p.clean.image for p in pairs], [p.clean.prompt for p in pairs])
    plan = [(s, name) for s in slots for name in regions]
    # Target/source token positions per (slot, region, pair): TL has no image-cell geometry.
    where = {}
    for s, name in plan:
        for j, pair in enumerate(pairs):
            region = resolve_region(regions[name], pair, clean.layouts[j])
            where[(s, name, j)] = patch_indices(si.site.lm_resid(s), region, "swap", clean.layouts[j],
                                                source.layouts[j])
    hooks = sorted({tl_hook_name(s, n_layers) for s in slots})
    inputs = dict(source.inputs)
    _, cache = bridge.run_with_cache(inputs.pop("input_ids"), names_filter=hooks, **inputs)
    rows = {key: cache[tl_hook_name(key[0], n_layers)][key[2], idx] for key, (_, idx) in where.items()}
    del cache
    groups = group_forwards([Intervention(si.site.lm_resid(s), regions[name], name, "swap") for s, name in plan],
                            PER_FORWARD)
    out = torch.zeros(len(plan), n, 3)
    for chosen in groups:
        batch = repeat_batch(vlm, clean, len(chosen))
        by_hook: dict[str, list[tuple[int, int, str]]] = {}
        for r, i in enumerate(chosen):
            s, name = plan[i]
            by_hook.setdefault(tl_hook_name(s, n_layers), []).append((r, s, name))

        def patch(act, hook, todo=None):
            for r, s, name in todo:
                for j in range(n):
                    act[r * n + j, where[(s, name, j)][0]] = rows[(s, name, j)]
            return act

        fwd_hooks = [(h, lambda act, hook, todo=todo: patch(act, hook, todo)) for h, todo in by_hook.items()]
        inputs = dict(batch.inputs)
        logits = bridge.run_with_hooks(inputs.pop("input_ids"), fwd_hooks=fwd_hooks, **inputs)[:, -1]
        for r, i in enumerate(chosen):
            out[i] = metric(logits[r * n:(r + 1) * n], pairs)
    return out


def measure(name: str, repeats: int) -> dict:
    vlm = si.load(name)
    bridge, why = boot_bridge(vlm)
    if bridge is None:
        print(f"{name}: skipped — {why}")
        return {"model": name, "skipped": why}
    vlm.model.set_attn_implementation("eager")  # what the bridge forced on its copy: same arithmetic
    pairs = make_pairs(vlm)
    regions = criss_cross_regions(vlm)
    slots = list(range(vlm.n_lm_layers + 1))
    metric = answer_probs(vlm.tokenizer)
    n_slots, n_regions = len(slots), len(regions)
    clean = {}

    def ours() -> torch.Tensor:
        result = sweep(vlm, pairs, [si.site.lm_resid(s) for s in slots], regions, metric, pairing="swap",
                       pairs_per_chunk=N_PAIRS, batch_size=N_PAIRS * PER_FORWARD, progress=False)
        clean["values"] = torch.from_numpy(result.extras["clean"].values.T)
        return torch.from_numpy(result.values).permute(1, 2, 3, 0).reshape(n_slots * n_regions, N_PAIRS, -1)

    runs = {"si_sweep": ours, "tl": lambda: tl_sweep(bridge, vlm, pairs, slots, regions, metric)}
    outputs = {key: fn() for key, fn in runs.items()}  # warm-up, and the results to compare
    diff = float((outputs["tl"] - outputs["si_sweep"]).abs().max())
    torch.testing.assert_close(outputs["tl"], outputs["si_sweep"], rtol=0, atol=1e-4)
    effect = float((outputs["si_sweep"] - clean["values"]).abs().max())
    cpu: dict[str, list[float]] = {key: [] for key in runs}
    wall: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():  # interleaved: other jobs' load hits both alike
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    med = {key: statistics.median(v) for key, v in cpu.items()}
    best = {key: min(v) for key, v in cpu.items()}
    med_wall = {key: statistics.median(v) for key, v in wall.items()}
    report = {
        "model": name, "arch": vlm.arch, "lm_layers": vlm.n_lm_layers, "seq_len": clean_seq_len(vlm, pairs),
        "work": f"{n_slots} slots x {n_regions} regions x {N_PAIRS} pairs", "attention": "eager (both)",
        "median_cpu_seconds": med, "min_cpu_seconds": best, "median_wall_seconds": med_wall,
        "all_cpu_seconds": cpu, "all_wall_seconds": wall,
        "tl_over_si_sweep_median_cpu": med["tl"] / med["si_sweep"],
        "tl_over_si_sweep_min_cpu": best["tl"] / best["si_sweep"],
        "tl_over_si_sweep_median_wall": med_wall["tl"] / med_wall["si_sweep"],
        "max_abs_diff": diff, "max_abs_patch_effect": effect,
    }
    print(f"{name}: si_sweep median CPU {med['si_sweep']:.3f} s (min {best['si_sweep']:.3f}), "
          f"tl {med['tl']:.3f} s (min {best['tl']:.3f}); tl / si_sweep = "
          f"{report['tl_over_si_sweep_median_cpu']:.2f} median CPU, {report['tl_over_si_sweep_min_cpu']:.2f} min CPU, "
          f"{report['tl_over_si_sweep_median_wall']:.2f} median wall; max |diff| {diff:.2g}, "
          f"max |patched - clean| {effect:.2g}")
    return report


def clean_seq_len(vlm, pairs) -> int:
    return vlm.prepare([pairs[0].clean.image], [pairs[0].clean.prompt]).seq_len


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    version = None
    if importlib.util.find_spec("transformer_lens") is not None:
        from importlib.metadata import version as dist_version
        version = dist_version("transformer-lens")
    reports = [measure(name, args.repeats) for name in args.models]
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"transformer_lens": version, "torch": torch.__version__, "threads": args.threads,
                       "repeats": args.repeats, "pairs": N_PAIRS, "rows_per_forward": N_PAIRS * PER_FORWARD,
                       "models": reports}, handle, indent=1)


if __name__ == "__main__":
    main()
