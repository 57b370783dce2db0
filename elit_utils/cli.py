"""The ``elit`` command line: ``elit reproduce``, ``elit simulate``, ``elit info``.

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
