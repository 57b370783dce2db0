"""Benchmark: per-frame latency for a live microscope, ELIT Lab vs atomai on the same frame in the same run.

One simulated 512x512 source frame. ELIT Lab: the quick profile's U-Net with 5 members,
:meth:`Ensemble.analyse` (probability maps and the frame's features in one call; the live row reads
the features from the prediction's own pass, ``shared_pass=True``, as ``elit watch`` does), the atoms
with their per-atom uncertainty (:func:`~elit_utils.locate.locate_atoms`) and the shift score
(:class:`~elit_utils.ood.ShiftDetector`). atomai: its ``EnsemblePredictor`` with the same 5
networks (mean and variance maps) and its ``Locator`` (atoms); atomai has neither per-atom
uncertainty nor a shift score, so ours does more work per frame. Without ``--model`` the
members are untrained, initialised from seeds 0-4 (atomai gets the very same weights): fine
for latency, except that atom finding then works on maps that are not atoms (give a trained
quick folder with ``--model`` for a representative atom-finding time). Prints the median of
``--repeats`` rounds (each round runs every case once, so load on the machine hits all alike)
of the wall time and the CPU time per frame, the ratios, and the time per stage.

    python benchmarks/bench_stream.py [--members 5 --size 512 --repeats 5] [--model DIR] [--smoke]

``--smoke``: 2 members of the smoke profile's U-Net on a 64x64 frame, seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_notebooks import machine as cpu_machine  # benchmarks/ is the script's folder, first on sys.path

from elit_utils import ensemble as ens
from elit_utils import simulate
from elit_utils.locate import locate_atoms
from elit_utils.ood import ShiftDetector
from elit_utils.runtime import resolve_precision
from elit_utils.unet import PackedUnet, UnetArchitecture


def machine() -> str:
    """The CPU model and cores (as bench_notebooks reports them), the threads torch uses, and the GPU if one is used."""
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_machine()}, torch {torch.__version__} on {torch.get_num_threads()} threads{gpu}"


def untrained_ensemble(architecture: UnetArchitecture, n_members: int, sampling_A_per_px: float, device: torch.device) -> ens.Ensemble:
    """Members initialised from seeds 0..n_members-1 (no training), packed as :meth:`Ensemble.load` packs them on ``device``."""
    per_pack = n_members if device.type == "cuda" else 1
    packs = [
        PackedUnet.from_seeds(list(range(start, min(start + per_pack, n_members))), architecture).to(device).to(memory_format=torch.channels_last).eval()
        for start in range(0, n_members, per_pack)
    ]
    record = {"sampling_A_per_px": sampling_A_per_px, "architecture": architecture.as_dict()}
    return ens.Ensemble(packs, list(range(n_members)), record, device, folder=Path("untrained members from seeds"))


def atomai_predictor(ensemble: ens.Ensemble) -> object:
    """atomai's ``EnsemblePredictor`` holding the same networks as ``ensemble``."""
    import atomai

    states = [pack.member_state_dict(index) for pack in ensemble.packs for index in range(pack.n_members)]
    skeleton = ensemble.packs[0].architecture.atomai_unet(0)
    return atomai.predictors.EnsemblePredictor(skeleton, dict(enumerate(states)), nb_classes=1, use_gpu=ensemble.device.type == "cuda")


def shift_detector(ensemble: ens.Ensemble, n_frames: int, size_px: int) -> ShiftDetector:
    """A detector fitted on ``n_frames`` source frames (not the benchmark frame)."""
    reference = simulate.dataset("source", n=n_frames, seed=7, image_size_px=size_px, cache=False)
    return ShiftDetector.fit(ensemble.features(reference.images, sampling_A_per_px=reference.conditions.sampling_A_per_px))


def median_ms(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median wall time and median CPU time (all threads of this process) of each case in ms, over
    ``repeats`` rounds after one warm-up round. On a machine others load, the wall time grows with
    their load and the CPU time much less: it estimates what the case costs on idle cores."""
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for round_index in range(repeats + 1):
        for name, run in cases.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            if round_index:
                seconds[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: tuple(1000 * np.median(values, axis=0)) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--size", type=int, default=512, help="frame side in px")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", type=Path, default=None, help="a trained model folder (default: untrained members from seeds)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    profile = "quick"
    if args.smoke:
        profile, args.members, args.size, args.repeats = "smoke", 2, 64, 2
    import atomai.predictors  # before timing

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    frame_data = simulate.dataset("source", n=1, seed=99, image_size_px=args.size, cache=False)
    frame, sampling = frame_data.images[0], frame_data.conditions.sampling_A_per_px
    if args.model:
        ensemble = ens.Ensemble.load(args.model, device=device)
        weights = f"trained members of {args.model}"
    else:
        ensemble = untrained_ensemble(ens.profile_training(profile)[0], args.members, sampling, device)
        weights = f"untrained members (seeds 0-{args.members - 1})"
    predictor = atomai_predictor(ensemble)
    locator = atomai.predictors.Locator(threshold=0.5)
    detector = shift_detector(ensemble, n_frames=8, size_px=min(args.size, 128))
    auto = resolve_precision("auto", device)

    def atomai_maps() -> tuple[np.ndarray, np.ndarray]:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Batch 1/1" (verbose=0 breaks it in atomai 0.8)
            return predictor.predict(frame[None], num_batches=1)

    def atomai_frame() -> object:
        return locator.run(atomai_maps()[0])

    def ours(precision: str, shared_pass: bool = False) -> Callable[[], object]:
        def frame_work() -> object:
            prediction, features = ensemble.analyse(frame, sampling_A_per_px=sampling, precision=precision, shared_pass=shared_pass)
            return locate_atoms(prediction), detector.score(features)

        return frame_work

    prediction, features = ensemble.analyse(frame, sampling_A_per_px=sampling)
    atomai_mean = atomai_maps()[0]
    totals = {
        "atomai: EnsemblePredictor.predict + Locator.run (atoms)": atomai_frame,
        f"ELIT Lab, {auto} (auto), live: analyse(shared_pass=True) + locate_atoms + shift score": ours("auto", shared_pass=True),
    }
    if auto != "fp32":  # the other ways analyse weighs: strict-fp32 features beside the prediction, or one strict-fp32 pass for both
        totals[f"ELIT Lab, {auto} (auto): analyse (prediction + strict-fp32 features) + locate_atoms + shift score"] = ours("auto")
        totals["ELIT Lab, fp32: analyse (one shared pass) + locate_atoms + shift score"] = ours("fp32")
    stages = {
        "atomai EnsemblePredictor.predict (mean, variance)": atomai_maps,
        "atomai Locator.run (atoms)": lambda: locator.run(atomai_mean),
        f"predict, {auto} (maps: mean, variance, entropy, MI)": lambda: ensemble.predict(frame, sampling_A_per_px=sampling),
        "features (encoder only, strict fp32)": lambda: ensemble.features(frame, sampling_A_per_px=sampling),
        "uncertainty_maps (numpy, from the members' maps)": lambda: ens.uncertainty_maps(prediction.members, sampling),
        "locate_atoms (atoms + per-atom uncertainty)": lambda: locate_atoms(prediction),
        "shift score (Mahalanobis)": lambda: detector.score(features),
    }
    load_before = os.getloadavg()[0]
    timings = median_ms({**totals, **stages}, args.repeats)
    n_atoms = len(locate_atoms(prediction))
    print(f"machine: {machine()}; load average before and after: {load_before:.1f}, {os.getloadavg()[0]:.1f}")
    print(f"{ensemble.n_members} {weights}, {profile} profile U-Net; one {args.size}x{args.size} source frame ({n_atoms} atoms found)")
    print(f"median of {args.repeats} rounds, each running every row once")
    reference_wall, reference_cpu = timings["atomai: EnsemblePredictor.predict + Locator.run (atoms)"]
    print("\n| per frame | wall ms | speed-up vs atomai | CPU ms | speed-up in CPU time |\n| --- | ---: | ---: | ---: | ---: |")
    for name in totals:
        wall, cpu = timings[name]
        print(f"| {name} | {wall:.0f} | {reference_wall / wall:.2f}x | {cpu:.0f} | {reference_cpu / cpu:.2f}x |")
    print("\n| stage | wall ms | CPU ms |\n| --- | ---: | ---: |")
    for name in stages:
        print(f"| {name} | {timings[name][0]:.1f} | {timings[name][1]:.1f} |")
    _, shared = ensemble.analyse(frame, sampling_A_per_px=sampling, shared_pass=True)
    moved = abs(detector.score(shared)[0] - detector.score(features)[0]) / detector.limit
    print(f"\nshift score from the shared {auto} pass against strict-fp32 features: moved by {moved:.2%} of the detector's limit ({weights}, this frame)")
    wall, cpu = timings[list(totals)[1]]
    print(f"\nratio (atomai / ours, live, {auto}): {reference_wall / wall:.2f}x in wall time, {reference_cpu / cpu:.2f}x in CPU time (goal >= 4x)")


if __name__ == "__main__":
    main()
