"""Run every tests/benchmarks/bench_*.py (or those named on the command line), one process each.

make bench -> python tests/benchmarks/run_all.py [bench_prepare ...]
Each script prints its JSON and writes out/benchmarks/<name>.json.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    # bench_ann indexes the word vectors bench_embeddings leaves in out/benchmarks/, so order matters.
    order = ["bench_prepare", "bench_ner", "bench_classifier", "bench_embeddings", "bench_ann"]
    names = argv or order + sorted(p.stem for p in HERE.glob("bench_*.py") if p.stem not in order)
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / f"{name}.py")], cwd=HERE.parents[1]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
