"""Benchmark: how fast the simulator makes labelled 256x256 frames (a script, not a test).

Prints images per second per domain and the time for 1000 source frames with masks and
coordinates, against the goal of 30 s on 2 CPU cores.

    python benchmarks/bench_simulate.py [--n 1000] [--smoke]

``--smoke``: 20 frames and 2 per domain, seconds (the verdict then means nothing: it checks the script runs).
"""

from __future__ import annotations

import argparse
import os
import time

from elit_utils import simulate

GOAL_SECONDS_PER_1000 = 30.0


def time_dataset(domain: str, n: int) -> float:
    start = time.perf_counter()
    data = simulate.dataset(domain, n=n, seed=123, image_size_px=256, cache=False)
    elapsed = time.perf_counter() - start
    assert data.images.shape == (n, 256, 256) and data.label_mask.shape == (n, 256, 256) and len(data.atoms) > 0
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="frames for the headline timing")
    parser.add_argument("--n-per-domain", type=int, default=50, help="frames per domain in the table")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.n_per_domain = 20, 2
    print(f"CPU cores: {os.cpu_count()}")
    print("| domain | frames | seconds | frames/s |\n| --- | ---: | ---: | ---: |")
    for name in simulate.DOMAINS:
        seconds = time_dataset(name, args.n_per_domain)
        print(f"| {name} | {args.n_per_domain} | {seconds:.2f} | {args.n_per_domain / seconds:.0f} |")
    seconds = time_dataset("source", args.n)
    per_1000 = seconds * 1000 / args.n
    verdict = "meets" if per_1000 <= GOAL_SECONDS_PER_1000 else "MISSES"
    print(f"\n{args.n} source frames of 256x256 px with masks and coordinates: {seconds:.1f} s ({args.n / seconds:.0f} frames/s)")
    print(f"per 1000 frames: {per_1000:.1f} s; goal <= {GOAL_SECONDS_PER_1000:.0f} s: {verdict} the goal")


if __name__ == "__main__":
    main()
