"""First contact: wall time of ``import spatial_interp`` and of ``spatial-interp --help`` (target < 1.5 s each).

Each is run in a fresh interpreter ``--repeat`` times; the median is reported, with what the import
pulled in (torch must not be among it). Writes ``benchmarks/results/import_time.json``.

    python benchmarks/import_time.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 1.5
CASES = {
    "import spatial_interp": [sys.executable, "-c", "import spatial_interp"],
    "spatial-interp --help": [sys.executable, "-m", "spatial_interp.cli", "--help"],
    "spatial-interp reproduce --help": [sys.executable, "-m", "spatial_interp.cli", "reproduce", "--help"],
    "import torch (for scale)": [sys.executable, "-c", "import torch"],
}


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    heavy = subprocess.run([sys.executable, "-c", "import sys, spatial_interp; print(sorted(m for m in "
                            "('torch', 'transformers', 'nnsight', 'torchvision', 'numpy') if m in sys.modules))"],
                           check=True, capture_output=True, text=True).stdout.strip()
    results = {}
    for name, command in CASES.items():
        times = [wall(command) for _ in range(args.repeat)]
        results[name] = {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}
        ok = "" if "for scale" in name else ("  (meets < 1.5 s)" if results[name]["median_s"] < TARGET_S
                                             else "  (MISSES 1.5 s)")
        sys.stdout.write(f"{name:34s} median {results[name]['median_s']:.2f} s, min {min(times):.2f} s{ok}\n")
    sys.stdout.write(f"heavy modules loaded by `import spatial_interp`: {heavy}\n")
    out = Path(__file__).parent / "results" / "import_time.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"results": results, "heavy_modules_after_import": heavy, "target_s": TARGET_S},
                              indent=1))


if __name__ == "__main__":
    main()
