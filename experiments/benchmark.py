"""Benchmark embsvd against the notebook way, and a large checkpoint's load.

python experiments/benchmark.py                      # every case, 3 repeats (about 25 min)
python experiments/benchmark.py --cases large --repeats 1
python experiments/benchmark.py --small              # a tiny checkpoint, as the tests run it
"""

import argparse
from pathlib import Path

from embsvd.benchmark import CASES, run_benchmark

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated: seed,sweep,large"
    )
    parser.add_argument("--repeats", type=int, default=3, help="measurements per side (median)")
    parser.add_argument("--small", action="store_true", help="tiny checkpoint, few runs")
    parser.add_argument("--out", type=Path, default=Path("benchmark.json"), help="the JSON report")
    args = parser.parse_args()
    run_benchmark(args.cases.split(","), args.repeats, args.small, args.out)
