"""Validation: our incoherent HAADF model against abTEM multislice on the same structure.

abTEM is an optional dependency (``pip install abtem``); this script is not run in CI.
It images one small graphene flake with Si dopants both ways, at the same optics and
scan sampling, and reports:

* atom positions: the sub-pixel centroid of each isolated peak in the abTEM image vs the
  true position (goal < 0.1 A), and the same for our image;
* the Si/C peak-intensity ratio of abTEM vs ours (goal: within 20 %);
* a patch of amorphous hydrocarbon contamination on the same sheet (the atoms of
  :func:`elit_utils.simulate.contamination_atoms`, spread through the patch's local thickness
  above the sheet, kept apart in depth): the patch's extra mean signal over clean graphene's
  (away from the Si dopants), abTEM vs ours (goal: within 20 %), and the pixel correlation of
  the two images. abTEM here is static (no frozen phonons, which cost 6x or more), and static
  multislice makes amorphous carbon about 6 % fainter per atom than the sheet's carbon (2 %
  with frozen phonons); our model adds all atoms alike.

    python benchmarks/validate_abtem.py [--smoke]

abTEM's cell is periodic, so the field sits in it with ``CELL_PAD_A`` of vacuum on each side:
the flake's atoms just outside the field (which our images see too) are not wrapped onto the
opposite edge.

``--smoke`` images a smaller field on a coarser scan (seconds); without abTEM installed it
prints our side of the tables only and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time

import numpy as np
from ase import Atoms

from elit_utils import simulate

FIELD_A = 16.0
SCAN_SAMPLING_A = 0.2
CENTROID_RADIUS_A = 0.5
#: Pixels this close to a Si dopant do not count as graphene's signal, in A (a probe's FWHM is about 1 A).
DOPANT_EXCLUSION_A = 2.0


SHEET_Z_A = 4.0
#: Contamination lies on the sheet: its atoms start one van der Waals gap above it, in A.
CONTAMINATION_GAP_A = 1.7
CELL_HEIGHT_A = 16.0
#: Vacuum added on each side of the field in abTEM's periodic cell, in A. The flake reaches
#: 1 A beyond the field (as in our images); in a cell no wider than the field, abTEM wraps
#: those atoms onto the opposite edge, where they doubled graphene's signal along every edge
#: and made the contamination patch look 17-38 % fainter relative to it (12 and 8 A fields).
#: With 3 A, the nearest periodic image of an atom is 5 A from the scanned field, where our
#: images see vacuum too.
CELL_PAD_A = 3.0
POTENTIAL_SAMPLING_A = 0.04


def flake(field_A: float) -> simulate.Structure:
    sample = simulate.SampleSpec(thermal_jitter_A=0.0, vacancy_density_per_nm2=0, divacancy_density_per_nm2=0, dopant_density_per_nm2=0, rotation_deg=7.0)
    structure = simulate.graphene_structure(sample, field_A, np.random.default_rng(0))
    centre = np.linalg.norm(structure.positions_A - field_A / 2, axis=1)
    numbers = structure.atomic_numbers.copy()
    numbers[np.argsort(centre)[[0, 20]]] = simulate.SILICON_Z  # two separated Si dopants near the middle
    return simulate.Structure(structure.positions_A, numbers)


def spread_heights_A(positions_A: np.ndarray, low_A: float | np.ndarray, high_A: np.ndarray, rng: np.random.Generator, tries: int = 32) -> np.ndarray:
    """A height in [low, high] (A) for each atom at ``positions_A`` (row, col): of ``tries`` draws, the farthest from the atoms before.

    Amorphous carbon has no two atoms closer than about a bond (1.4 A); independent uniform heights
    put half of the patch's atoms within 1.3 A of another, pairs that a static multislice images
    coherently (two C atoms 0.3 A apart scatter 20 % less than two apart). Our incoherent model
    adds atoms whatever their height, so only abTEM's image depends on this.

    >>> heights = spread_heights_A(np.zeros((2, 2)), np.zeros(2), np.full(2, 3.0), np.random.default_rng(0))
    >>> bool(abs(heights[1] - heights[0]) >= 1.5)  # two atoms in one column: as far apart as 3 A allows
    True
    """
    placed = np.empty((0, 3))
    for (row, col), low, high in zip(positions_A, np.broadcast_to(low_A, len(positions_A)), high_A):
        candidates = np.column_stack([np.full(tries, row), np.full(tries, col), rng.uniform(low, high, tries)])
        nearest_A = np.linalg.norm(candidates[:, None] - placed[None], axis=2).min(axis=1) if len(placed) else np.zeros(tries)
        placed = np.vstack([placed, candidates[np.argmax(nearest_A)]])
    return placed[:, 2]


def contaminated(lattice: simulate.Structure, conditions: simulate.ImagingConditions) -> tuple[simulate.Structure, np.ndarray, np.ndarray]:
    """The sheet with a contamination patch on it: the structure, each atom's height (A) and the patch's thickness map (A)."""
    dirty = dataclasses.replace(conditions, contamination_coverage=0.4, contamination_length_A=4.0)
    shape = (conditions.image_size_px, conditions.image_size_px)
    thickness = simulate.contamination_thickness_A(dirty, shape, np.random.default_rng(7))
    positions_px, numbers = simulate.contamination_atoms(dirty, shape, np.random.default_rng(7))  # the same draws: atoms fill that map
    pixel = np.clip(np.round(positions_px).astype(int), 0, shape[0] - 1)
    low_A = SHEET_Z_A + CONTAMINATION_GAP_A
    heights = spread_heights_A(positions_px * conditions.sampling_A_per_px, low_A, low_A + thickness[pixel[:, 0], pixel[:, 1]], np.random.default_rng(8))
    structure = simulate.Structure(
        np.vstack([lattice.positions_A, positions_px * conditions.sampling_A_per_px]),
        np.r_[lattice.atomic_numbers, numbers],
        np.r_[np.zeros(len(lattice), bool), np.ones(len(numbers), bool)],
    )
    return structure, np.r_[np.full(len(lattice), SHEET_Z_A), heights], thickness


def abtem_atoms(structure: simulate.Structure, heights_A: np.ndarray, field_A: float) -> Atoms:
    """The structure as ASE atoms in abTEM's periodic cell: ``CELL_PAD_A`` of vacuum around the field, no atom wrapped.

    ASE's x is our column and y our row; the field's corner (0, 0) lies at (CELL_PAD_A, CELL_PAD_A).

    >>> atoms = abtem_atoms(flake(8.0), np.full(len(flake(8.0)), SHEET_Z_A), 8.0)
    >>> bool((atoms.get_scaled_positions(wrap=False)[:, :2] > 0).all() and (atoms.get_scaled_positions(wrap=False) < 1).all())
    True
    """
    side_A = field_A + 2 * CELL_PAD_A
    xyz = np.column_stack([structure.positions_A[:, 1] + CELL_PAD_A, structure.positions_A[:, 0] + CELL_PAD_A, heights_A])
    outside = ((xyz[:, :2] < 0) | (xyz[:, :2] >= side_A)).any(axis=1)
    if outside.any():
        raise ValueError(f"{outside.sum()} atoms lie over CELL_PAD_A={CELL_PAD_A} A outside the {field_A} A field: abTEM would wrap them; crop them")
    return Atoms(numbers=structure.atomic_numbers, positions=xyz, cell=[side_A, side_A, CELL_HEIGHT_A], pbc=True)


def abtem_image(structure: simulate.Structure, heights_A: np.ndarray, conditions: simulate.ImagingConditions) -> np.ndarray:
    """abTEM's ADF image (fraction of the beam on the 80-200 mrad detector) over our field, on our pixel grid."""
    import abtem
    import scipy.fft

    field_A = conditions.field_of_view_A
    atoms = abtem_atoms(structure, heights_A, field_A)
    abtem.config.set({"device": "cpu", "fft": "fftw"})
    grid = scipy.fft.next_fast_len(int(np.ceil(atoms.cell[0, 0] / POTENTIAL_SAMPLING_A)))  # no large prime factors in the FFTs
    potential = abtem.Potential(atoms, gpts=grid, slice_thickness=1.0, projection="infinite", parametrization="lobato")
    probe = abtem.Probe(
        energy=conditions.beam_energy_kV * 1e3, semiangle_cutoff=conditions.convergence_semiangle_mrad, defocus=conditions.defocus_A, Cs=conditions.cs_mm * 1e7
    )
    scan = abtem.GridScan(start=(CELL_PAD_A, CELL_PAD_A), end=(CELL_PAD_A + field_A, CELL_PAD_A + field_A), gpts=conditions.image_size_px)
    detector = abtem.AnnularDetector(inner=80, outer=200)
    measurement = probe.scan(potential, scan=scan, detectors=detector).compute()
    return np.asarray(measurement.array).T  # abTEM indexes (x, y); ours (row = y, col = x)


def peak_positions(image: np.ndarray, atoms_px: np.ndarray, sampling_A_per_px: float) -> np.ndarray:
    """Intensity-weighted centroid around each true atom position (px), background-subtracted."""
    radius = CENTROID_RADIUS_A / sampling_A_per_px
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    found = []
    for r, c in atoms_px:
        near = (rows - r) ** 2 + (cols - c) ** 2 <= (radius + 1) ** 2
        weights = np.clip(image[near] - np.percentile(image, 20), 0, None)
        found.append([np.sum(rows[near] * weights) / weights.sum(), np.sum(cols[near] * weights) / weights.sum()])
    return np.array(found)


def compare_positions(images: dict[str, np.ndarray], structure: simulate.Structure, sampling_A_per_px: float) -> None:
    atoms_px = structure.positions_A / sampling_A_per_px
    size = next(iter(images.values())).shape[0]
    interior = ((atoms_px > 4) & (atoms_px < size - 5)).all(axis=1)
    silicon = structure.atomic_numbers == simulate.SILICON_Z
    print("| image | median position error (A) | 95th percentile (A) | Si/C peak ratio |\n| --- | ---: | ---: | ---: |")
    ratios = {}
    for name, image in images.items():
        error_A = np.linalg.norm(peak_positions(image, atoms_px[interior], sampling_A_per_px) - atoms_px[interior], axis=1) * sampling_A_per_px
        peaks = np.array([image[round(r), round(c)] for r, c in atoms_px[interior]])
        ratios[name] = peaks[silicon[interior]].mean() / np.median(peaks[~silicon[interior]])
        print(f"| {name} | {np.median(error_A):.3f} | {np.percentile(error_A, 95):.3f} | {ratios[name]:.2f} |")
    if len(ratios) == 2:
        print(f"\nSi/C ratio, ours vs abTEM: {ratios[OURS] / ratios[ABTEM] - 1:+.1%} (goal within 20 %)")


def compare_contamination(
    images: dict[str, np.ndarray], clean: dict[str, np.ndarray], thickness_A: np.ndarray, lattice: simulate.Structure, sampling_A_per_px: float
) -> dict[str, float]:
    """Print and return each image's extra signal in the patch over clean graphene's mean signal, and how alike the images are.

    Graphene's signal is the clean image's mean over the pixels farther than ``DOPANT_EXCLUSION_A``
    from every Si dopant: a dopant under the patch would mix the Si/C ratio (set by the Z
    exponent, compared on its own above) into a comparison of carbon with carbon.
    """
    patch = thickness_A > 0.5 * thickness_A.max()
    rows, cols = np.indices(thickness_A.shape) * sampling_A_per_px
    silicon_A = lattice.positions_A[lattice.atomic_numbers == simulate.SILICON_Z]
    carbon = np.ones(thickness_A.shape, bool)
    for row, col in silicon_A:
        carbon &= np.hypot(rows - row, cols - col) > DOPANT_EXCLUSION_A
    print("\n| image of the contaminated sheet | patch signal / graphene signal | pixel correlation with abTEM |\n| --- | ---: | ---: |")
    ratios = {}
    for name, image in images.items():
        ratios[name] = (image[patch].mean() - clean[name][patch].mean()) / clean[name][carbon].mean()
        correlation = np.corrcoef(image.ravel(), images[ABTEM].ravel())[0, 1] if ABTEM in images else float("nan")
        print(f"| {name} | {ratios[name]:.2f} | {correlation:.3f} |")
    if len(ratios) == 2:
        print(f"\nContamination's extra signal, ours vs abTEM: {ratios[OURS] / ratios[ABTEM] - 1:+.1%} (goal within 20 %)")
    return ratios


ABTEM, OURS = "abTEM multislice", "ELIT Lab incoherent"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small field on a coarse scan, for a quick check")
    args = parser.parse_args()
    field_A, sampling = (8.0, 0.4) if args.smoke else (FIELD_A, SCAN_SAMPLING_A)
    conditions = dataclasses.replace(
        simulate.DOMAINS["source"].conditions,
        image_size_px=int(field_A / sampling),
        sampling_A_per_px=sampling,
        dose_e_per_A2=None,
        background_fraction=0.0,
        source_size_fwhm_A=0.0,  # abTEM's probe here is fully coherent
    )
    lattice = flake(field_A)
    dirty, heights, thickness = contaminated(lattice, conditions)
    ours = {name: simulate.image_structure(s, conditions, np.random.default_rng(0)).image for name, s in (("clean", lattice), ("dirty", dirty))}
    clean_images, dirty_images = {OURS: ours["clean"]}, {OURS: ours["dirty"]}
    if importlib.util.find_spec("abtem") is None:
        print("abTEM is not installed (pip install abtem): only our side of each table is shown.\n")
    else:
        start = time.perf_counter()
        clean_images[ABTEM] = abtem_image(lattice, np.full(len(lattice), SHEET_Z_A), conditions)
        dirty_images[ABTEM] = abtem_image(dirty, heights, conditions)
        size = conditions.image_size_px
        print(f"abTEM multislice: {time.perf_counter() - start:.0f} s for two {size}x{size} scans; ours: milliseconds\n")
    compare_positions(clean_images, lattice, sampling)
    compare_contamination(dirty_images, clean_images, thickness, lattice, sampling)


if __name__ == "__main__":
    main()
