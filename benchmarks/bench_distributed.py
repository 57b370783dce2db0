"""Benchmark: ensemble training and prediction in one process vs as Dask tasks on a LocalCluster of 1 and 2 workers.

Training: the same members (seeds), data and settings in each run, each into a fresh folder;
member-iterations per second, from the call of ``train_ensemble`` to its return (the cluster is
started, and every mode warmed up with an untimed short training and prediction, before the clock starts;
the cluster's start-up is printed apart). Prediction: the same frames with
``Ensemble.predict_many``; frames per second, each worker's load of the trained ensemble included.
In-process is measured before and after the clusters and the faster run kept (on a shared machine the
load varies). Workers get the machine's cores shared out (``threads_per_worker``), as ``--scheduler local:N`` does.

Where a member task's time goes: "loop s" is the mean of the members' own training-loop seconds (their
JSON's ``seconds``, timed on the worker), so training s minus the loops is what the tasks cost around them
(sending data, waiting, writing the member); "page faults" are the minor page faults of the training,
per member (this process, or summed over the workers), which the machine's load does not change: a worker
that maps every large tensor afresh shows many more of them (``distributed.freed_memory_reused``).

    python benchmarks/bench_distributed.py [--members 4 --iterations 20 --frames 24 --frame-size 256]
    python benchmarks/bench_distributed.py --smoke   # tiny sizes: checks that it runs (under a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from elit_utils import ensemble as ens
from elit_utils import simulate
from elit_utils.distributed import threads_per_worker
from elit_utils.unet import UnetArchitecture


def run_modes(args: argparse.Namespace, folder: Path) -> list[dict]:
    """Train and predict in process, then on clusters of 1 and 2 workers: one row of timings per mode."""
    from distributed import Client, LocalCluster

    train = simulate.dataset("source", n=args.images, seed=0, image_size_px=args.size, cache=False)
    frames = list(simulate.dataset("source", n=args.frames, seed=1, image_size_px=args.frame_size, cache=False).images)
    architecture = UnetArchitecture(nb_filters=args.filters)
    config = ens.TrainingConfig(n_iterations=args.iterations, batch_size=args.batch, swa_iterations=min(5, args.iterations))
    sampling = train.conditions.sampling_A_per_px

    def measure(name: str, client: object | None, started_s: float) -> dict:
        # untimed: the first calls in a process are slow (measured: one tiny training took 16, 7, 4, then 0.9 s in one process)
        warm_up = ens.TrainingConfig(n_iterations=args.warm_up_iterations, batch_size=args.batch, swa_iterations=1)
        warm_folder = folder / f"{name}-warm-up-{time.time_ns()}"
        warmed = ens.train_ensemble(train.images, train.atom_mask, warm_folder, 2, sampling, architecture, warm_up, device="cpu", progress=False, client=client)
        sum(1 for _ in warmed.predict_many(frames[:2], client=client, sampling_A_per_px=sampling, frames_per_task=1))
        faults = minor_page_faults(client)
        start = time.perf_counter()
        out = folder / f"{name}-{time.time_ns()}"
        options = {"device": "cpu", "progress": False, "client": client}
        trained = ens.train_ensemble(train.images, train.atom_mask, out, args.members, sampling, architecture, config, **options)
        train_s = time.perf_counter() - start
        faults_per_member = (minor_page_faults(client) - faults) / args.members
        loop_s = sum(json.loads(path.read_text())["seconds"] for path in out.glob("member_*.json")) / args.members
        start = time.perf_counter()
        n_done = sum(1 for _ in trained.predict_many(frames, client=client, sampling_A_per_px=sampling, frames_per_task=args.frames_per_task))
        predict_s = time.perf_counter() - start
        assert n_done == len(frames)
        return {"mode": name, "start_s": started_s, "train_s": train_s, "loop_s": loop_s, "faults": faults_per_member, "predict_s": predict_s}

    rows = [measure("in-process", None, 0.0)]
    for workers in (1, 2):
        start = time.perf_counter()
        with (
            LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker(workers), processes=True, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            name = f"LocalCluster {workers} worker{'s' if workers > 1 else ''} x {threads_per_worker(workers)} threads"
            rows.append(measure(name, client, time.perf_counter() - start))
    again = measure("in-process", None, 0.0)  # measured before and after the clusters (a shared machine's load varies): the faster counts
    faster = again if again["train_s"] < rows[0]["train_s"] else rows[0]
    rows[0] = {**faster, "predict_s": min(rows[0]["predict_s"], again["predict_s"])}
    return rows


def minor_page_faults(client: object | None) -> int:
    """Minor page faults so far: of this process, or summed over the workers of ``client``."""
    if client is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    return sum(client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt).values())


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    work = args.members * args.iterations
    base = rows[0]
    print(
        f"\nTraining: {args.members} members x {args.iterations} iterations, batch {args.batch}, {args.filters}-filter U-Net, "
        f"{args.images} images of {args.size} px. Prediction: {args.frames} frames of {args.frame_size} px, {args.frames_per_task} per task."
    )
    print("| mode | cluster start s | training s | loop s / member | faults / member | member-it/s | vs in-process | prediction s | frames/s | vs in-process |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['mode']} | {row['start_s']:.1f} | {row['train_s']:.1f} | {row['loop_s']:.2f} | {row['faults']:,.0f} "
            f"| {work / row['train_s']:.2f} | {base['train_s'] / row['train_s']:.2f}x "
            f"| {row['predict_s']:.1f} | {args.frames / row['predict_s']:.2f} | {base['predict_s'] / row['predict_s']:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=32, help="training images")
    parser.add_argument("--size", type=int, default=128, help="training image side, px")
    parser.add_argument("--filters", type=int, default=16, help="U-Net base filters (the paper profile's 16)")
    parser.add_argument("--frames", type=int, default=24, help="frames to predict")
    parser.add_argument("--frame-size", type=int, default=256, help="frame side, px")
    parser.add_argument("--frames-per-task", type=int, default=4)
    parser.add_argument("--warm-up-iterations", type=int, default=3, help="untimed training iterations before each mode's timing")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that the benchmark runs")
    args = parser.parse_args()
    if args.smoke:
        args.members, args.iterations, args.batch, args.images, args.size, args.filters = 2, 2, 2, 4, 32, 4
        args.frames, args.frame_size, args.frames_per_task, args.warm_up_iterations = 4, 32, 2, 1
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"device: cpu ({os.cpu_count()} cores); torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        print_table(run_modes(args, Path(folder)), args)


if __name__ == "__main__":
    main()
