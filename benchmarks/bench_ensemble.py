"""Benchmark: our ensemble trainer and predictor against atomai's, on the same task.

Training: the same simulated source-domain data, the same atomai ``Unet``
architecture, the same number of members, iterations and batch size; both with
augmentation and stochastic weight averaging. Prints wall time, throughput
(member-iterations per second), their ratio, and the held-out F1 (0.5 A
tolerance, 0.5 A border) of each ensemble's mean map.

Prediction: 10 members on one 512x512 frame, atomai's ``EnsemblePredictor`` vs
``Ensemble.predict`` (which also returns entropy and mutual information).

    python benchmarks/bench_ensemble.py [--members 3 --iterations 150 --batch 8] [--smoke]

``--smoke``: tiny sizes (2 members, 32 iterations, 32 px, 40 images; prediction of a 64x64
frame), seconds, so that ``make test`` runs the whole script and it cannot rot unseen.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from elit_utils import ensemble as ens
from elit_utils import simulate
from elit_utils.io import normalize_image
from elit_utils.locate import find_atoms
from elit_utils.metrics import detection_scores
from elit_utils.unet import PackedUnet, UnetArchitecture

ARCHITECTURE = UnetArchitecture(nb_filters=16)


def mean_f1(probability_maps: np.ndarray, test: simulate.SimulatedDataset) -> float:
    found = 0
    matched = 0
    true = 0
    for index, probability in enumerate(probability_maps):
        scores = detection_scores(
            find_atoms(probability), test.coordinates(index)[:, :2], test.conditions.sampling_A_per_px, 0.5, probability.shape, border_A=0.5
        )
        found, matched, true = found + scores.n_found, matched + scores.n_matched, true + scores.n_true
    precision, recall = matched / max(found, 1), matched / max(true, 1)
    return 2 * precision * recall / max(precision + recall, 1e-12)


def train_atomai(train: simulate.SimulatedDataset, members: int, iterations: int, batch: int, folder: Path) -> tuple[float, np.ndarray, object]:
    import atomai

    images = normalize_image(train.images)[:, None].astype(np.float32)
    masks = train.atom_mask[:, None].astype(np.float32)
    trainer = atomai.trainers.EnsembleTrainer("Unet", nb_classes=1, nb_filters=ARCHITECTURE.nb_filters, batch_norm=True, layers=list(ARCHITECTURE.layers))
    trainer.compile_ensemble_trainer(
        training_cycles=iterations, batch_size=batch, loss="ce", swa=True, print_loss=10**9, filename=str(folder / "atomai"), plot_training_history=False
    )
    # the ELIT paper's augmentation settings, through atomai's own augmentor
    augment = atomai.transforms.seg_augmentor(1, gauss_noise=[2000, 3000], poisson_noise=[30, 45], contrast=True, zoom=True, blur=True)
    start = time.perf_counter()
    skeleton, weights = trainer.train_ensemble_from_scratch(images, masks, n_models=members, augment_fn=augment)
    return time.perf_counter() - start, images, atomai.predictors.EnsemblePredictor(skeleton, weights, nb_classes=1)


def atomai_mean_maps(predictor: object, images: np.ndarray) -> np.ndarray:
    mean, _ = predictor.predict(normalize_image(images)[:, None], format_out="channel_first")
    return np.asarray(mean)[:, 0]


def prediction_speed(members: int, size: int, repeats: int = 3) -> list[tuple[str, float]]:
    """Best of ``repeats`` seconds per frame for atomai and for us, on untrained members (initialised from seeds 0..members-1)."""
    import atomai

    frame = normalize_image(simulate.dataset("source", n=1, seed=99, image_size_px=size, cache=False).images)
    weights = {i: ARCHITECTURE.atomai_unet(i).state_dict() for i in range(members)}
    predictor = atomai.predictors.EnsemblePredictor(ARCHITECTURE.atomai_unet(0), weights, nb_classes=1)
    record = {"sampling_A_per_px": 0.1, "architecture": ARCHITECTURE.as_dict()}
    packs = [PackedUnet.from_seeds([i], ARCHITECTURE).to(memory_format=torch.channels_last).eval() for i in range(members)]
    ours = ens.Ensemble(packs, list(range(members)), record, torch.device("cpu"), folder=Path("untrained members from seeds"))
    timings = []
    for name, run in (
        ("atomai EnsemblePredictor (mean, variance)", lambda: predictor.predict(frame[:, None], format_out="channel_first")),
        ("ELIT Lab, fp32 (mean, variance, entropy, MI)", lambda: ours.predict(frame[0], precision="fp32")),
        ("ELIT Lab, bf16 where fast (same maps)", lambda: ours.predict(frame[0], precision="auto")),
    ):
        run()  # warm-up
        best = min(_timed(run) for _ in range(repeats))
        timings.append((name, best))
    return timings


def _timed(run: object) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the script runs")
    args = parser.parse_args()
    n_train, n_test, predict_members, predict_size = 200, 20, 10, 512
    if args.smoke:
        args.members, args.iterations, args.batch, args.size = 2, 32, 4, 32  # atomai averages the last 30 iterations: at least 31
        n_train, n_test, predict_members, predict_size = 40, 2, 2, 64  # atomai holds out 20 %: 8 images, 2 batches
    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    print(f"device: {device}; torch {torch.__version__}; bf16 fast here: {ens.use_bf16('auto', torch.device('cuda' if torch.cuda.is_available() else 'cpu'))}")
    if not args.skip_training:
        train = simulate.dataset("source", n=n_train, seed=0, image_size_px=args.size)
        test = simulate.dataset("source", n=n_test, seed=500, image_size_px=args.size)
        work = args.members * args.iterations
        with tempfile.TemporaryDirectory() as folder:
            atomai_seconds, _, predictor = train_atomai(train, args.members, args.iterations, args.batch, Path(folder))
            atomai_f1 = mean_f1(atomai_mean_maps(predictor, test.images), test)
            config = ens.TrainingConfig(n_iterations=args.iterations, batch_size=args.batch, swa_iterations=min(30, args.iterations // 5))
            start = time.perf_counter()
            ours = ens.train_ensemble(train.images, train.atom_mask, Path(folder) / "ours", args.members, 0.1, ARCHITECTURE, config, progress=False)
            our_seconds = time.perf_counter() - start
            our_f1 = mean_f1(ours.predict(test.images).mean, test)
        print(f"\nTraining: {args.members} members x {args.iterations} iterations, batch {args.batch}, {args.size}x{args.size} px, {n_train} images")
        print("| trainer | seconds | member-iterations/s | held-out F1 |\n| --- | ---: | ---: | ---: |")
        print(f"| atomai EnsembleTrainer | {atomai_seconds:.1f} | {work / atomai_seconds:.2f} | {atomai_f1:.4f} |")
        print(f"| ELIT Lab train_ensemble | {our_seconds:.1f} | {work / our_seconds:.2f} | {our_f1:.4f} |")
        print(f"throughput ratio (ours / atomai): {atomai_seconds / our_seconds:.2f}x (goal >= 2x at equal or better F1)")
    timings = prediction_speed(predict_members, predict_size)
    print(f"\nPrediction: {predict_members} members (untrained, from seeds), one {predict_size}x{predict_size} frame")
    print("| predictor | seconds | speed-up vs atomai |\n| --- | ---: | ---: |")
    for name, seconds in timings:
        print(f"| {name} | {seconds:.2f} | {timings[0][1] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
