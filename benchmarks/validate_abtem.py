"""Validation: our incoherent HAADF model against abTEM multislice on the same structure.

abTEM is an optional dependency (``pip install abtem``); this script is not run in CI.
It images one small graphene flake with Si dopants both ways, at the same optics and
scan sampling, and reports:

* atom positions: the sub-pixel centroid of each isolated peak in the abTEM image vs the
  true position (goal < 0.1 A), and the same for our image;
* the Si/C peak-intensity ratio of abTEM vs ours (goal: within 20 %).

    python benchmarks/validate_abtem.py
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from elit_utils import simulate

FIELD_A = 16.0
SCAN_SAMPLING_A = 0.2
CENTROID_RADIUS_A = 0.5


def flake() -> simulate.Structure:
    sample = simulate.SampleSpec(thermal_jitter_A=0.0, vacancy_density_per_nm2=0, divacancy_density_per_nm2=0, dopant_density_per_nm2=0, rotation_deg=7.0)
    structure = simulate.graphene_structure(sample, FIELD_A, np.random.default_rng(0))
    centre = np.linalg.norm(structure.positions_A - FIELD_A / 2, axis=1)
    numbers = structure.atomic_numbers.copy()
    numbers[np.argsort(centre)[[0, 20]]] = simulate.SILICON_Z  # two separated Si dopants near the middle
    return simulate.Structure(structure.positions_A, numbers)


def abtem_image(structure: simulate.Structure, conditions: simulate.ImagingConditions) -> np.ndarray:
    import abtem

    atoms = structure.to_ase(thickness_A=8.0)
    atoms.cell = [FIELD_A, FIELD_A, 8.0]
    atoms.pbc = True
    abtem.config.set({"device": "cpu", "fft": "fftw"})
    potential = abtem.Potential(atoms, sampling=0.04, slice_thickness=1.0, projection="infinite", parametrization="lobato")
    probe = abtem.Probe(
        energy=conditions.beam_energy_kV * 1e3, semiangle_cutoff=conditions.convergence_semiangle_mrad, defocus=conditions.defocus_A, Cs=conditions.cs_mm * 1e7
    )
    scan = abtem.GridScan(start=(0, 0), end=(FIELD_A, FIELD_A), sampling=SCAN_SAMPLING_A)
    detector = abtem.AnnularDetector(inner=80, outer=200)
    measurement = probe.scan(potential, scan=scan, detectors=detector).compute()
    return np.asarray(measurement.array).T  # abTEM indexes (x, y); ours (row = y, col = x)


def peak_positions(image: np.ndarray, atoms_px: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid around each true atom position (px), background-subtracted."""
    radius = CENTROID_RADIUS_A / SCAN_SAMPLING_A
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    found = []
    for r, c in atoms_px:
        near = (rows - r) ** 2 + (cols - c) ** 2 <= (radius + 1) ** 2
        weights = np.clip(image[near] - np.percentile(image, 20), 0, None)
        found.append([np.sum(rows[near] * weights) / weights.sum(), np.sum(cols[near] * weights) / weights.sum()])
    return np.array(found)


def main() -> None:
    structure = flake()
    conditions = dataclasses.replace(
        simulate.DOMAINS["source"].conditions,
        image_size_px=int(FIELD_A / SCAN_SAMPLING_A),
        sampling_A_per_px=SCAN_SAMPLING_A,
        dose_e_per_A2=None,
        background_fraction=0.0,
        source_size_fwhm_A=0.0,  # abTEM's probe here is fully coherent
    )
    ours = simulate.image_structure(structure, conditions, np.random.default_rng(0)).image
    start = time.perf_counter()
    reference = abtem_image(structure, conditions)
    seconds = time.perf_counter() - start
    atoms_px = structure.positions_A / SCAN_SAMPLING_A
    interior = ((atoms_px > 4) & (atoms_px < ours.shape[0] - 5)).all(axis=1)
    silicon = structure.atomic_numbers == simulate.SILICON_Z
    print(f"abTEM multislice: {seconds:.0f} s for a {ours.shape[0]}x{ours.shape[1]} scan; ours: milliseconds")
    print("| image | median position error (A) | 95th percentile (A) | Si/C peak ratio |\n| --- | ---: | ---: | ---: |")
    ratios = {}
    for name, image in (("abTEM multislice", reference), ("ELIT Lab incoherent", ours)):
        error_A = np.linalg.norm(peak_positions(image, atoms_px[interior]) - atoms_px[interior], axis=1) * SCAN_SAMPLING_A
        peaks = np.array([image[round(r), round(c)] for r, c in atoms_px[interior]])
        ratios[name] = peaks[silicon[interior]].mean() / np.median(peaks[~silicon[interior]])
        print(f"| {name} | {np.median(error_A):.3f} | {np.percentile(error_A, 95):.3f} | {ratios[name]:.2f} |")
    difference = ratios["ELIT Lab incoherent"] / ratios["abTEM multislice"] - 1
    print(f"\nSi/C ratio, ours vs abTEM: {difference:+.1%} (goal within 20 %)")


if __name__ == "__main__":
    main()
