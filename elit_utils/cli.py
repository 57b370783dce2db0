"""The ``elit`` command line: ``reproduce``, ``simulate``, ``train``, ``predict``, ``adapt``, ``info``.

Run ``elit --help`` or ``elit SUBCOMMAND --help``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import PROFILES


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    reproduce(profile=args.profile, out=args.out, notebook_dir=args.notebooks, log_output=args.verbose)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from .cache import atomic_path, save_npz_atomic, write_json_atomic
    from .config import to_jsonable
    from .simulate import dataset

    out = Path(args.out)
    targets = [out / "dataset.npz", out / "atoms.csv", out / "conditions.json"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.overwrite:
        print(f"error: {', '.join(existing)} already exist; choose another --out or pass --overwrite.", file=sys.stderr)
        return 2
    data = dataset(args.domain, args.n, seed=args.seed, image_size_px=args.size, cache=False)
    save_npz_atomic(targets[0], {"images": data.images, "label_mask": data.label_mask, "atoms": data.atoms})
    sampling = data.conditions.sampling_A_per_px
    rows = ["frame,row_px,col_px,class,class_name,y_A,x_A"]
    rows += [f"{int(f)},{r:.3f},{c:.3f},{int(k)},{'Si' if k else 'C'},{r * sampling:.3f},{c * sampling:.3f}" for f, r, c, k in data.atoms]
    with atomic_path(targets[1]) as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    write_json_atomic(
        targets[2], {"domain": data.domain, "n": len(data), "seed": data.seed, "conditions": to_jsonable(data.conditions), "sample": to_jsonable(data.sample)}
    )
    n_si = int(np.sum(data.atoms[:, 3] == 1))
    print(f"Wrote {len(data)} images of {data.images.shape[1]}x{data.images.shape[2]} px ({len(data.atoms)} atoms, {n_si} Si) to {out}/")
    return 0


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .config import get_profile
    from .ensemble import profile_training, train_ensemble
    from .ood import SHIFT_DETECTOR_FILE, fit_shift_detector
    from .simulate import dataset

    profile = get_profile(args.profile)
    architecture, config = profile_training(profile)
    if args.iterations:
        config = replace(config, n_iterations=args.iterations, swa_iterations=min(config.swa_iterations, args.iterations))
    data = dataset(args.domain, n=args.images or profile.n_train_images, seed=args.seed, image_size_px=profile.image_size_px)
    members = args.members or profile.n_members
    print(f"Training {members} members on {len(data)} {args.domain} images ({profile.name} profile) into {args.out}/")
    ensemble = train_ensemble(
        data.images, data.atom_mask, args.out, members, data.conditions.sampling_A_per_px, architecture, config, first_seed=args.seed * 1000
    )
    final = ensemble.loss_histories()[-10:].mean(axis=0)
    print(f"Done: {ensemble.n_members} members; final loss per member: {', '.join(f'{v:.3f}' for v in final)}")
    detector_path = Path(args.out) / SHIFT_DETECTOR_FILE
    if not detector_path.exists():  # fresh frames of the training domain, not the training images
        detector = fit_shift_detector(ensemble, profile.n_shift_reference_images, args.seed + 4000, profile.image_size_px, args.domain)
        detector.save(detector_path)
        print(f"Shift detector fitted on {profile.n_shift_reference_images} fresh {args.domain} frames (limit {detector.limit:.1f}) -> {detector_path.name}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .cache import atomic_path
    from .ensemble import Ensemble
    from .io import load_image
    from .locate import locate_atoms
    from .viz import show_atoms_with_uncertainty

    out = Path(args.out)
    frames_csv = out / "frames.csv"
    if frames_csv.exists() and not args.overwrite:
        print(f"error: {frames_csv} already exists; choose another --out or pass --overwrite.", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    ensemble = Ensemble.load(args.model)
    detector = _shift_detector(Path(args.model))
    rows = ["image,atoms,mean_mi_nats,feature_distance,flag_limit,out_of_distribution"]
    for path in map(Path, args.images):
        targets = [out / f"{path.stem}.csv", out / f"{path.stem}.png"]
        if any(t.exists() for t in targets) and not args.overwrite:
            print(f"error: {targets[0]} or its PNG already exists; choose another --out or pass --overwrite.", file=sys.stderr)
            return 2
        loaded = load_image(path, sampling_A_per_px=args.sampling, frame=args.frame, require_sampling=True)
        prediction = ensemble.predict(loaded.image, sampling_A_per_px=loaded.sampling_A_per_px)
        atoms = locate_atoms(prediction, threshold=args.threshold)
        atoms.to_csv(targets[0])
        fig = show_atoms_with_uncertainty(loaded.image, atoms.rows_px, atoms.cols_px, atoms.mutual_information, loaded.sampling_A_per_px, path.name)
        fig.savefig(targets[1], dpi=120, bbox_inches="tight")
        plt.close(fig)
        mean_mi = float(prediction.mutual_information.mean())
        fields, shift = _shift_check(detector, ensemble, loaded)
        rows.append(f"{path.name},{len(atoms)},{mean_mi:.5f},{fields}")
        print(f"{path.name}: {len(atoms)} atoms, mean frame MI {mean_mi:.4f} nats{shift} -> {targets[0].name}, {targets[1].name}")
    with atomic_path(frames_csv) as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    return 0


def _shift_check(detector: object | None, ensemble: object, loaded: object) -> tuple[str, str]:
    """For one frame: CSV fields (feature distance, limit, out of distribution) and a sentence; blank without a detector."""
    if detector is None:
        return ",,", ""
    distance = float(detector.score(ensemble.features(loaded.image, sampling_A_per_px=loaded.sampling_A_per_px))[0])
    flagged = distance > detector.limit
    verdict = "OUT OF DISTRIBUTION: check the atoms, or adapt the model (elit adapt)" if flagged else "like the training frames"
    return f"{distance:.2f},{detector.limit:.2f},{flagged}", f", feature distance {distance:.1f} (limit {detector.limit:.1f}): {verdict}"


def _shift_detector(model: Path) -> object | None:
    """The model folder's shift detector, or None (with a note) when it has none."""
    from .ood import SHIFT_DETECTOR_FILE, ShiftDetector

    if not (model / SHIFT_DETECTOR_FILE).exists():
        print(f"note: {model} has no {SHIFT_DETECTOR_FILE} (elit train writes one), so frames are not checked for a shift.")
        return None
    return ShiftDetector.load(model / SHIFT_DETECTOR_FILE)


def _adapt(args: argparse.Namespace) -> int:
    from .ensemble import Ensemble
    from .io import load_image
    from .iterate import AdaptConfig, adapt
    from .locate import locate_atoms
    from .simulate import dataset

    out = Path(args.out)
    paths = [Path(p) for p in args.frames]
    atom_files = [out / "atoms" / f"{p.stem}.csv" for p in paths]
    existing = [str(f) for f in atom_files if f.exists()]
    if existing and not args.overwrite:
        print(f"error: {', '.join(existing[:3])} already exist; choose another --out or pass --overwrite.", file=sys.stderr)
        return 2
    loaded = [load_image(p, sampling_A_per_px=args.sampling, frame=args.frame, require_sampling=True) for p in paths]
    ensemble = Ensemble.load(args.model)
    source = None
    if not args.no_source:
        simulated = dataset("source", n=64, seed=0, image_size_px=128)
        if abs(simulated.conditions.sampling_A_per_px - ensemble.sampling_A_per_px) < 1e-6:
            source = (simulated.images, simulated.atom_mask)
        else:
            print(
                f"note: the model's pixel size ({ensemble.sampling_A_per_px} A/px) differs from the simulated source frames'; adapting without source mixing."
            )
    config = AdaptConfig(rounds=args.rounds, iterations_per_round=args.iterations)
    frames = [frame.image for frame in loaded]
    samplings = [frame.sampling_A_per_px for frame in loaded]
    result = adapt(ensemble, frames, samplings, out, config, source=source)
    for row in result.history:
        print(
            f"round {row['round']}: {row['atoms_found']} atoms, mean MI {row['mean_mi_nats']:.4f} nats"
            + (f", {row['pseudo_labels']} pseudo-labels" if "pseudo_labels" in row else "")
        )
    (out / "atoms").mkdir(exist_ok=True)
    for frame, sampling, target in zip(frames, samplings, atom_files):
        locate_atoms(result.ensemble.predict(frame, sampling_A_per_px=sampling)).to_csv(target)
    final = out / f"round_{result.history[-1]['round']}"
    print(f"adapted ensemble: {final}/; history: {out / 'history.csv'}; atoms: {out / 'atoms'}/")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .cache import cache_dir, package_versions
    from .config import get_profile
    from .report import results_dir
    from .simulate import DOMAINS

    print(f"profile: {get_profile().name} (choose with ELIT_PROFILE or --profile)")
    for profile in PROFILES.values():
        print(f"  {profile.name}: {profile.n_members} members, {profile.n_iterations} iterations, {profile.image_size_px} px images")
    print(f"cache: {cache_dir()}")
    print(f"results: {results_dir()}")
    print("domains: " + ", ".join(DOMAINS))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``elit`` command."""
    from .simulate import DOMAINS

    parser = argparse.ArgumentParser(prog="elit", description="ELIT Lab: ensemble learning and iterative training for atom finding in STEM images.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    reproduce = commands.add_parser("reproduce", help="run every notebook headless and write results/ (metrics.json, summary.md, figures)")
    reproduce.add_argument("--profile", choices=list(PROFILES), default=None, help="run profile (default: $ELIT_PROFILE or quick)")
    reproduce.add_argument("--out", default="results", help="results folder (default: results)")
    reproduce.add_argument("--notebooks", default=None, help="folder of numbered notebooks (default: the checkout's notebooks/)")
    reproduce.add_argument("--verbose", action="store_true", help="stream the notebooks' output")
    reproduce.set_defaults(handler=_reproduce)

    simulate = commands.add_parser("simulate", help="simulate labelled STEM images of graphene for a domain")
    simulate.add_argument("--domain", choices=list(DOMAINS), default="source", help="imaging domain (default: source)")
    simulate.add_argument("-n", type=int, default=10, help="number of images (default: 10)")
    simulate.add_argument("--size", type=int, default=None, help="image side in px (default: the domain's, 256)")
    simulate.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    simulate.add_argument("--out", required=True, help="output folder: dataset.npz, atoms.csv, conditions.json")
    simulate.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    simulate.set_defaults(handler=_simulate)

    train = commands.add_parser("train", help="train an ensemble of U-Nets on simulated images (resumes an interrupted run)")
    train.add_argument("--domain", choices=list(DOMAINS), default="source", help="training domain (default: source)")
    train.add_argument("--members", type=int, default=None, help="ensemble size (default: the profile's)")
    train.add_argument("--iterations", type=int, default=None, help="iterations per member (default: the profile's)")
    train.add_argument("--images", type=int, default=None, help="training images (default: the profile's)")
    train.add_argument("--profile", choices=list(PROFILES), default=None, help="run profile (default: $ELIT_PROFILE or quick)")
    train.add_argument("--seed", type=int, default=0, help="data and member seeds (default: 0)")
    train.add_argument("--out", required=True, help="model folder: ensemble.json and member_NNNN.safetensors/.json")
    train.set_defaults(handler=_train)

    predict = commands.add_parser(
        "predict", help="find atoms with uncertainty in micrographs (CSV and PNG per image) and check each frame for a shift (frames.csv)"
    )
    predict.add_argument("images", nargs="+", help="image files: .npy .tif .png .h5 .dm3 .dm4 .emd")
    predict.add_argument("--model", required=True, help="model folder written by elit train")
    predict.add_argument("--sampling", type=float, default=None, help="pixel size in A/px when the file has none")
    predict.add_argument("--frame", type=int, default=None, help="frame index for image stacks")
    predict.add_argument("--threshold", type=float, default=0.5, help="probability threshold for atoms (default: 0.5)")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.set_defaults(handler=_predict)

    adapt = commands.add_parser("adapt", help="adapt an ensemble to new, unlabelled frames by iterative training on its own confident atoms")
    adapt.add_argument("frames", nargs="+", help="unlabelled frames (any sizes): .npy .tif .png .h5 .dm3 .dm4 .emd")
    adapt.add_argument("--model", required=True, help="model folder written by elit train")
    adapt.add_argument("--sampling", type=float, default=None, help="pixel size in A/px when the files have none")
    adapt.add_argument("--frame", type=int, default=None, help="frame index for image stacks")
    adapt.add_argument("--rounds", type=int, default=3, help="maximum rounds (default: 3; stops early when nothing changes)")
    adapt.add_argument("--iterations", type=int, default=100, help="fine-tuning steps per member and round (default: 100)")
    adapt.add_argument("--no-source", action="store_true", help="do not mix simulated source frames into fine-tuning")
    adapt.add_argument("--out", required=True, help="output folder: round_K/ ensembles, history.json/.csv, atoms/; an interrupted run resumes")
    adapt.add_argument("--overwrite", action="store_true", help="replace atom tables already in --out/atoms")
    adapt.set_defaults(handler=_adapt)

    info = commands.add_parser("info", help="show the profile, cache and results folders, domains and versions")
    info.set_defaults(handler=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``elit`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
