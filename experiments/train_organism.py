"""Train a model organism from scratch, evaluate it, and write its checkpoint folder and model card.

    python experiments/train_organism.py --arch qwen2_vl --out runs/organism-qwen2-vl
    python experiments/train_organism.py --arch gemma3 --out runs/organism-gemma3
    python experiments/train_organism.py --arch qwen2_vl --ship   # also copy into spatial_interp/models/organisms/
    python experiments/train_organism.py --arch qwen2_vl --mechanism vision   # a planted route for order

Seeded and resumable (rerun the same command after an interruption); CPU, 1 thread by default (on a shared
2-core machine one thread per run avoids oversubscription, which made 2-thread runs 3x slower).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from spatial_interp.training import PLANTED, SPECS, finalize_organism, spec_for, train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(SPECS), required=True)
    parser.add_argument("--mechanism", choices=["emergent", *PLANTED], default="emergent",
                        help="the route for order to plant (emergent: the original organisms, no route planted)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/organism-<name>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the shipped organisms were trained with 1; results are "
                             "bit-reproducible for a given count)")
    parser.add_argument("--workers", type=int, default=1, choices=(0, 1),
                        help="background processes that render and encode batches (default 1; same batches as 0)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    parser.add_argument("--skip-mechanism", action="store_true", help="skip the mechanism measurements")
    parser.add_argument("--ship", action="store_true", help="copy the result into spatial_interp/models/organisms/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    try:
        spec = spec_for(args.arch, args.mechanism)
    except ValueError as error:
        parser.error(str(error))
    out = args.out or Path("runs") / f"organism-{spec.name}"
    result = train(spec, out, seed=args.seed, resume=not args.no_resume, threads=args.threads,
                   workers=args.workers)
    finalize_organism(spec, result, out, ship=args.ship, mechanism=not args.skip_mechanism)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
