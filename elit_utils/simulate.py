"""Physical simulation of HAADF-STEM images of graphene, with exact atom labels.

The model, step by step (all quantities in physical units):

1. **Structure** (:func:`graphene_structure`): a graphene sheet (a = 2.46 A,
   C-C = 1.42 A) covering the field of view, randomly rotated and shifted, with
   optional uniform strain, thermal jitter, holes (edges), Si dopants (single,
   dimer, trimer) and vacancies (single, di-). Positions are ``(row, col)`` in A.
2. **Probe** (:func:`probe_intensity`): the intensity of the aberrated probe,
   ``|IFT[aperture(k) exp(-i chi(k))]|^2`` with defocus, Cs and two-fold
   astigmatism, blurred by a Gaussian effective source; or a plain Gaussian.
3. **Incoherent HAADF image**: each atom scatters a fraction of the beam onto
   the detector given by its cross-section ``sigma_C (Z/6)^gamma``; the expected
   counts are ``dose x sum_i sigma_i P(r - r_i)``, formed by FFT convolution.
4. **Specimen and scan effects**: smooth background, amorphous hydrocarbon
   contamination (a thickness map filled with random C and H atoms), slow linear
   drift (which moves the labels with the atoms) and scan-line jitter (which does
   not: it is noise).

Every atom is either *of the lattice* (labelled: the network should find it) or
*clutter* (contamination and adatoms: real atoms that belong to no lattice and carry
no label). Each frame records where clutter lies (:attr:`SimulatedImage.clutter_mask`),
so that what a network finds there can be scored apart (precision inside clutter).
5. **Detector**: Poisson counts at the given dose, Gaussian read noise, gain and
   offset.

Why our own code rather than a multislice code such as abTEM: a training set
needs thousands of images in seconds; the incoherent model is exact for the
atom positions and close for relative intensities (``benchmarks/validate_abtem.py``
compares the two), and it is about four orders of magnitude faster.

Example
-------
>>> data = dataset("source", n=2, seed=0, image_size_px=64, cache=False)
>>> data.images.shape, data.label_mask.shape
((2, 64, 64), (2, 64, 64))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy.ndimage import distance_transform_edt, map_coordinates
from scipy.spatial import cKDTree

from .cache import cached_arrays

#: Bump when the physics changes, so that cached data sets are rebuilt.
SIMULATOR_VERSION = 3

CARBON_Z = 6
SILICON_Z = 14
HYDROGEN_Z = 1
CLASS_NAMES = ("C", "Si")
#: Number density of amorphous carbon at 2.0 g/cm^3, atoms per A^3 (graphite: 2.26 g/cm^3).
AMORPHOUS_CARBON_ATOMS_PER_A3 = 0.100
#: Pixels within this distance of a clutter atom (C or Si, not H) count as clutter, A: about a C-C
#: bond, so that a patch of contamination reads as one region and an adatom as a small disc.
CLUTTER_REACH_A = 1.5
#: Atoms of two grains closer than this across a grain boundary are merged into one, A
#: (bonds are 1.42 A; closer pairs would be unphysical).
GRAIN_MERGE_A = 1.1
#: Areal density of graphene, atoms per A^2 (2 atoms per cell of a^2 sqrt(3)/2).
GRAPHENE_ATOMS_PER_A2 = 4.0 / (np.sqrt(3.0) * 2.46**2)
#: Atoms this far outside the frame still get (cut) mask discs.
EDGE_BAND_A = 1.0
#: Nearest-neighbour cut-off used to find bonded atoms (C-C is 1.42 A).
BOND_CUTOFF_A = 1.75


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class SampleSpec:
    """What the specimen looks like: lattice, disorder and defect densities.

    Attributes
    ----------
    lattice_constant_A: graphene lattice constant (2.46 A; C-C bond = a / sqrt(3)).
    thermal_jitter_A: rms random displacement of each atom along each axis.
    vacancy_density_per_nm2: single vacancies per nm^2.
    divacancy_density_per_nm2: divacancies (two bonded atoms missing) per nm^2.
    dopant_density_per_nm2: Si dopant sites (clusters) per nm^2.
    dopant_cluster_fractions: share of single, dimer and trimer Si clusters.
    hole_density_per_nm2: holes (with edges) per nm^2.
    hole_radius_A: (min, max) radius of a hole.
    strain: uniform strain (e_rr, e_cc, e_rc) in the image frame, fractional.
    rotation_deg: lattice rotation; None draws it uniformly in [0, 60).
    edge_dopant_fraction: share of the atoms at hole edges (two bonds) that are Si, where Si
        is often seen in experiments.
    adatom_density_per_nm2: C adatoms per nm^2, each above the centre of a hexagon (clutter:
        a real atom, but of no lattice).
    grain_misorientation_deg: 0 for one grain; otherwise a straight grain boundary crosses the
        field between two grains rotated this much apart, with the disordered rings (5-7 and
        others) that joining them leaves (not relaxed).

    >>> SampleSpec(dopant_density_per_nm2=1.0).lattice_constant_A
    2.46
    """

    lattice_constant_A: float = 2.46
    thermal_jitter_A: float = 0.05
    vacancy_density_per_nm2: float = 0.05
    divacancy_density_per_nm2: float = 0.02
    dopant_density_per_nm2: float = 0.1
    dopant_cluster_fractions: tuple[float, float, float] = (0.7, 0.2, 0.1)
    hole_density_per_nm2: float = 0.0
    hole_radius_A: tuple[float, float] = (3.0, 6.0)
    strain: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation_deg: float | None = None
    edge_dopant_fraction: float = 0.0
    adatom_density_per_nm2: float = 0.0
    grain_misorientation_deg: float = 0.0

    def __post_init__(self) -> None:
        _require(1.0 < self.lattice_constant_A < 5.0, f"lattice_constant_A={self.lattice_constant_A} A is not a lattice constant (graphene: 2.46 A)")
        for name in (
            "thermal_jitter_A",
            "vacancy_density_per_nm2",
            "divacancy_density_per_nm2",
            "dopant_density_per_nm2",
            "hole_density_per_nm2",
            "adatom_density_per_nm2",
        ):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        fractions = np.asarray(self.dopant_cluster_fractions, float)
        _require(
            fractions.shape == (3,) and (fractions >= 0).all() and fractions.sum() > 0,
            "dopant_cluster_fractions needs three non-negative shares (single, dimer, trimer)",
        )
        _require(0 < self.hole_radius_A[0] <= self.hole_radius_A[1], "hole_radius_A must be (min, max) with 0 < min <= max")
        _require(0 <= self.edge_dopant_fraction <= 1, f"edge_dopant_fraction is a share in [0, 1], got {self.edge_dopant_fraction}")
        _require(
            0 <= self.grain_misorientation_deg <= 30,
            f"grain_misorientation_deg must be in [0, 30] degrees (graphene repeats every 60), got {self.grain_misorientation_deg}",
        )


@dataclass(frozen=True)
class ImagingConditions:
    """How the microscope images the specimen; a domain is one set of these.

    Attributes
    ----------
    image_size_px: side of the square image.
    sampling_A_per_px: pixel size.
    beam_energy_kV: accelerating voltage (60-100 kV for graphene).
    convergence_semiangle_mrad: probe-forming aperture semi-angle.
    defocus_A: defocus (positive = underfocus, i.e. C10 = -defocus).
    cs_mm: spherical aberration C30 (about 0.001 mm when corrected).
    astigmatism_A: two-fold astigmatism C12.
    astigmatism_angle_deg: its azimuth.
    source_size_fwhm_A: effective source size (Gaussian blur of the probe).
    probe_model: ``"optics"`` (from the parameters above) or ``"gaussian"``.
    gaussian_probe_fwhm_A: probe FWHM when ``probe_model="gaussian"``.
    z_exponent: gamma in the HAADF cross-section ``~ Z^gamma`` (1.6-1.8).
    carbon_cross_section_A2: HAADF cross-section of one C atom.
    dose_e_per_A2: electron dose; None gives the noiseless expected counts.
    read_noise_counts: rms Gaussian detector noise, in counts.
    detector_gain: output units per count (contrast).
    detector_offset: output units added (brightness).
    scan_jitter_px: rms random shift of each scan line along the fast axis.
    drift_A_per_frame: specimen drift (rows, cols) during one frame.
    background_fraction: smooth background, relative to graphene's mean signal.
    background_length_A: correlation length of that background.
    contamination_coverage: fraction of the field covered by amorphous hydrocarbon (a property
        of the specimen, kept here because it grows during a session under the beam).
    contamination_length_A: typical size of contamination patches.
    contamination_thickness_A: thickness of the thickest parts of a patch; the thickness rises
        from zero at a patch's edge, and each pixel holds amorphous carbon atoms in proportion
        (``AMORPHOUS_CARBON_ATOMS_PER_A3`` x thickness per A^2: 3 A is about as many atoms per
        area as the graphene sheet).
    contamination_h_per_c: hydrogen atoms per carbon atom in the contamination (hydrocarbon;
        H scatters about 5 % of what C does into the HAADF detector).

    >>> ImagingConditions(dose_e_per_A2=1e4).sampling_A_per_px
    0.1
    """

    image_size_px: int = 256
    sampling_A_per_px: float = 0.1
    beam_energy_kV: float = 60.0
    convergence_semiangle_mrad: float = 30.0
    defocus_A: float = 0.0
    cs_mm: float = 0.001
    astigmatism_A: float = 0.0
    astigmatism_angle_deg: float = 0.0
    source_size_fwhm_A: float = 0.8
    probe_model: str = "optics"
    gaussian_probe_fwhm_A: float = 1.0
    z_exponent: float = 1.7
    carbon_cross_section_A2: float = 0.01
    dose_e_per_A2: float | None = 3e5
    read_noise_counts: float = 0.5
    detector_gain: float = 1.0
    detector_offset: float = 0.0
    scan_jitter_px: float = 0.0
    drift_A_per_frame: tuple[float, float] = (0.0, 0.0)
    background_fraction: float = 0.5
    background_length_A: float = 12.0
    contamination_coverage: float = 0.0
    contamination_length_A: float = 6.0
    contamination_thickness_A: float = 4.0
    contamination_h_per_c: float = 0.5

    def __post_init__(self) -> None:
        _require(
            isinstance(self.image_size_px, (int, np.integer)) and self.image_size_px >= 16,
            f"image_size_px must be an integer >= 16, got {self.image_size_px!r}",
        )
        _require(
            0.01 <= self.sampling_A_per_px <= 5.0,
            f"sampling_A_per_px={self.sampling_A_per_px} is outside 0.01-5 A/px; is it in nm or pm? (0.1 A/px = 0.01 nm/px = 10 pm/px)",
        )
        _require(10 <= self.beam_energy_kV <= 1000, f"beam_energy_kV={self.beam_energy_kV} is not an electron-microscope voltage in kV")
        _require(1 <= self.convergence_semiangle_mrad <= 100, f"convergence_semiangle_mrad={self.convergence_semiangle_mrad} is not a semi-angle in mrad")
        _require(self.probe_model in ("optics", "gaussian"), f"probe_model must be 'optics' or 'gaussian', got {self.probe_model!r}")
        _require(self.dose_e_per_A2 is None or self.dose_e_per_A2 > 0, f"dose_e_per_A2 must be > 0 or None, got {self.dose_e_per_A2}")
        _require(0 <= self.contamination_coverage < 1, f"contamination_coverage is a fraction in [0, 1), got {self.contamination_coverage}")
        for name in ("source_size_fwhm_A", "read_noise_counts", "scan_jitter_px", "background_fraction", "cs_mm"):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _require(
            self.contamination_thickness_A >= 0 and self.contamination_h_per_c >= 0,
            "contamination_thickness_A (in A) and contamination_h_per_c must be >= 0",
        )
        _require(self.gaussian_probe_fwhm_A > 0 and self.carbon_cross_section_A2 > 0, "gaussian_probe_fwhm_A and carbon_cross_section_A2 must be > 0")

    @property
    def field_of_view_A(self) -> float:
        """Side of the imaged field, in A."""
        return self.image_size_px * self.sampling_A_per_px


@dataclass(frozen=True)
class Domain:
    """A named imaging domain: the specimen and the microscope's conditions.

    >>> DOMAINS["low_dose"].conditions.dose_e_per_A2 < DOMAINS["source"].conditions.dose_e_per_A2
    True
    """

    name: str
    description: str
    conditions: ImagingConditions = field(default_factory=ImagingConditions)
    sample: SampleSpec = field(default_factory=SampleSpec)


def _shifted(description: str, name: str, sample: SampleSpec | None = None, **conditions: object) -> Domain:
    return Domain(name, description, dataclasses.replace(ImagingConditions(), **conditions), sample or SampleSpec())


#: The source domain (like the paper's training data) and the named target domains.
DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("source", "aberration-corrected 60 kV, 0.1 A/px, good dose, clean graphene with a few point defects"),
        _shifted("dose 10x lower (3e4 e/A^2): shot noise dominates", "low_dose", dose_e_per_A2=3e4),
        _shifted("dose 43x lower (7e3 e/A^2): members disagree about which faint blobs are atoms", "very_low_dose", dose_e_per_A2=7e3),
        _shifted("coarser pixels (0.2 A/px): atoms span fewer pixels", "coarse_sampling", sampling_A_per_px=0.2),
        _shifted("finer pixels (0.06 A/px): atoms span more pixels", "fine_sampling", sampling_A_per_px=0.06),
        _shifted("50 A of defocus: a wider probe with tails", "defocus", defocus_A=50.0),
        _shifted("25 A of two-fold astigmatism: elongated atoms", "astigmatism", astigmatism_A=25.0, astigmatism_angle_deg=30.0),
        _shifted("specimen drift (2, 3) A per frame and 1.5 px scan-line jitter", "drift", drift_A_per_frame=(2.0, 3.0), scan_jitter_px=1.5),
        _shifted(
            "amorphous carbon over 30 % of the field and a strong smooth background", "contamination", contamination_coverage=0.3, background_fraction=1.5
        ),
        _shifted(
            "clutter: amorphous hydrocarbon over 40 % of the field, C adatoms, holes with Si at their edges and a grain boundary",
            "contaminated",
            sample=SampleSpec(
                hole_density_per_nm2=0.15,
                edge_dopant_fraction=0.2,
                adatom_density_per_nm2=0.3,
                grain_misorientation_deg=21.8,
            ),
            contamination_coverage=0.4,
            background_fraction=1.0,
        ),
        _shifted(
            "ten times more Si, plus vacancies and holes with edges",
            "dopant_rich",
            sample=SampleSpec(dopant_density_per_nm2=1.0, vacancy_density_per_nm2=0.2, divacancy_density_per_nm2=0.1, hole_density_per_nm2=0.15),
        ),
        _shifted(
            "an experiment-like mix: lower dose, finer pixels, slight defocus, drift, jitter and some contamination",
            "experiment_like",
            sample=SampleSpec(dopant_density_per_nm2=0.2),
            dose_e_per_A2=1e5,
            sampling_A_per_px=0.08,
            defocus_A=10.0,
            astigmatism_A=8.0,
            drift_A_per_frame=(1.0, -1.5),
            scan_jitter_px=1.0,
            contamination_coverage=0.1,
            background_fraction=1.5,
        ),
    )
}


def get_domain(domain: str | Domain) -> Domain:
    """The domain called ``domain`` (or ``domain`` itself when it is a Domain).

    >>> get_domain("drift").conditions.scan_jitter_px
    1.5
    """
    if isinstance(domain, Domain):
        return domain
    if domain not in DOMAINS:
        raise ValueError(f"Unknown domain {domain!r}; choose one of: {', '.join(DOMAINS)}.")
    return DOMAINS[domain]


# --------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class Structure:
    """Atoms of a specimen in the image plane.

    Attributes
    ----------
    positions_A: (n, 2) float64, (row, col) in A from the field's top-left corner.
    atomic_numbers: (n,) int, 6 for C and 14 for Si.
    clutter: (n,) bool, True for atoms of no lattice (adatoms): imaged, never labelled.
        None: every atom is of the lattice.

    >>> Structure(np.zeros((2, 2)), np.array([6, 14])).clutter.tolist()
    [False, False]
    """

    positions_A: np.ndarray
    atomic_numbers: np.ndarray
    clutter: np.ndarray | None = None

    def __post_init__(self) -> None:
        clutter = np.zeros(len(self.atomic_numbers), bool) if self.clutter is None else np.asarray(self.clutter, bool)
        _require(clutter.shape == (len(self.atomic_numbers),), f"clutter needs one flag per atom, got shape {clutter.shape}")
        object.__setattr__(self, "clutter", clutter)

    def __len__(self) -> int:
        return len(self.atomic_numbers)

    def to_ase(self, thickness_A: float = 10.0):
        """The structure as an ``ase.Atoms`` (x = col, y = row, in a cell with vacuum), e.g. for abTEM."""
        from ase import Atoms

        rows, cols = self.positions_A[:, 0], self.positions_A[:, 1]
        xyz = np.column_stack([cols, rows, np.full(len(self), thickness_A / 2)])
        extent = self.positions_A.max(axis=0) + 1.0
        return Atoms(numbers=self.atomic_numbers, positions=xyz, cell=[extent[1], extent[0], thickness_A], pbc=False)


def graphene_lattice(lattice_constant_A: float, radius_A: float, rotation_deg: float, offset_A: np.ndarray) -> np.ndarray:
    """Ideal graphene positions (row, col in A) within ``radius_A`` of the origin.

    >>> positions = graphene_lattice(2.46, 5.0, 0.0, np.zeros(2))
    >>> bool(np.isclose(np.sort(np.linalg.norm(positions - positions[0], axis=1))[1], 1.42, atol=0.01))
    True
    """
    a = lattice_constant_A
    a1 = np.array([0.0, a])
    a2 = np.array([a * np.sqrt(3) / 2, a / 2])
    basis = np.array([[0.0, 0.0], (a1 + a2) / 3])
    n = int(np.ceil(2 * radius_A / a)) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    cells = i.reshape(-1, 1) * a1 + j.reshape(-1, 1) * a2
    positions = (cells[:, None, :] + basis[None] + offset_A).reshape(-1, 2)
    theta = np.deg2rad(rotation_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    positions = positions @ rotation.T
    return positions[np.linalg.norm(positions, axis=1) <= radius_A]


def _neighbours(positions: np.ndarray) -> np.ndarray:
    """Indices of up to three bonded neighbours of each atom; -1 where absent."""
    tree = cKDTree(positions)
    distances, indices = tree.query(positions, k=4, distance_upper_bound=BOND_CUTOFF_A)
    indices = np.where(np.isfinite(distances), indices, -1)[:, 1:]
    return indices


def _pick_sites(rng: np.random.Generator, density_per_nm2: float, area_A2: float, candidates: np.ndarray) -> np.ndarray:
    count = min(rng.poisson(density_per_nm2 * area_A2 / 100.0), len(candidates))
    return rng.choice(candidates, size=count, replace=False) if count else np.empty(0, int)


def graphene_structure(sample: SampleSpec, field_of_view_A: float, rng: np.random.Generator, margin_A: float = 0.0) -> Structure:
    """A random graphene specimen covering a square field (plus a margin), with defects.

    Positions run from ``-margin_A`` to ``field_of_view_A + margin_A``.

    >>> s = graphene_structure(SampleSpec(dopant_density_per_nm2=0), 20.0, np.random.default_rng(0))
    >>> bool((s.atomic_numbers == 6).all())
    True
    """
    side = field_of_view_A + 2 * margin_A
    rotation = rng.uniform(0, 60) if sample.rotation_deg is None else sample.rotation_deg
    positions = _strained_grain(sample, side, rotation, rng, field_of_view_A)
    if sample.grain_misorientation_deg > 0:
        positions = _grain_boundary(
            positions, _strained_grain(sample, side, rotation + sample.grain_misorientation_deg, rng, field_of_view_A), field_of_view_A, rng
        )
    inside = ((positions >= -margin_A - 1.0) & (positions <= field_of_view_A + margin_A + 1.0)).all(axis=1)
    positions = positions[inside]
    area = side * side
    keep = np.ones(len(positions), bool)
    for _ in range(rng.poisson(sample.hole_density_per_nm2 * area / 100.0)):
        centre = rng.uniform(-margin_A, field_of_view_A + margin_A, size=2)
        keep &= np.linalg.norm(positions - centre, axis=1) > rng.uniform(*sample.hole_radius_A)
    positions = positions[keep]
    if sample.hole_density_per_nm2 > 0:  # atoms left with fewer than two bonds do not survive at an edge
        bonded = (_neighbours(positions) >= 0).sum(axis=1)
        positions = positions[bonded >= 2]
    numbers = np.full(len(positions), CARBON_Z)
    neighbours = _neighbours(positions)
    if sample.edge_dopant_fraction > 0:
        numbers[_edge_atoms(positions, neighbours, field_of_view_A, margin_A, sample.edge_dopant_fraction, rng)] = SILICON_Z
    fractions = np.asarray(sample.dopant_cluster_fractions, float)
    for seed_atom in _pick_sites(rng, sample.dopant_density_per_nm2, area, np.arange(len(positions))):
        size = rng.choice(3, p=fractions / fractions.sum()) + 1
        partners = neighbours[seed_atom][neighbours[seed_atom] >= 0][: size - 1]
        numbers[np.r_[seed_atom, partners]] = SILICON_Z
    carbon = np.flatnonzero(numbers == CARBON_Z)
    removed = list(_pick_sites(rng, sample.vacancy_density_per_nm2, area, carbon))
    for seed_atom in _pick_sites(rng, sample.divacancy_density_per_nm2, area, carbon):
        partners = neighbours[seed_atom][neighbours[seed_atom] >= 0]
        removed += [seed_atom, *partners[:1]]
    keep = np.ones(len(positions), bool)
    keep[np.asarray(removed, int)] = False
    keep |= numbers == SILICON_Z  # a divacancy next to a dopant keeps the dopant
    positions = positions[keep] + rng.normal(0.0, sample.thermal_jitter_A, size=(keep.sum(), 2))
    lattice = Structure(positions, numbers[keep])
    return _with_adatoms(lattice, sample.adatom_density_per_nm2, area, rng) if sample.adatom_density_per_nm2 > 0 else lattice


def _strained_grain(sample: SampleSpec, side_A: float, rotation_deg: float, rng: np.random.Generator, field_of_view_A: float) -> np.ndarray:
    """One grain of graphene covering the field (and its margin), randomly shifted, strained, centred on the field."""
    offset = rng.uniform(0, sample.lattice_constant_A, size=2)
    positions = graphene_lattice(sample.lattice_constant_A, side_A / np.sqrt(2) + 2.0, rotation_deg, offset)
    e_rr, e_cc, e_rc = sample.strain
    return positions @ (np.eye(2) + np.array([[e_rr, e_rc], [e_rc, e_cc]])).T + field_of_view_A / 2


def _grain_boundary(first: np.ndarray, second: np.ndarray, field_of_view_A: float, rng: np.random.Generator) -> np.ndarray:
    """Two grains joined along a straight line through the field's central half, at a random angle.

    Atoms of the two grains closer than ``GRAIN_MERGE_A`` across the line become one atom at
    their midpoint; what is left is the boundary's disordered rings (not relaxed).
    """
    point = rng.uniform(0.25, 0.75, size=2) * field_of_view_A
    angle = rng.uniform(0, np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])
    positions = np.vstack([first[(first - point) @ normal < 0], second[(second - point) @ normal >= 0]])
    merged = np.zeros(len(positions), bool)
    for i, j in sorted(cKDTree(positions).query_pairs(GRAIN_MERGE_A)):
        if not (merged[i] or merged[j]):
            positions[i] = (positions[i] + positions[j]) / 2
            merged[j] = True
    return positions[~merged]


def _edge_atoms(positions: np.ndarray, neighbours: np.ndarray, field_of_view_A: float, margin_A: float, share: float, rng: np.random.Generator) -> np.ndarray:
    """A random ``share`` of the atoms with two bonds at hole edges (not at the cut around the field)."""
    away_from_cut = ((positions >= -margin_A + 1.0) & (positions <= field_of_view_A + margin_A)).all(axis=1)
    edge = np.flatnonzero(((neighbours >= 0).sum(axis=1) == 2) & away_from_cut)
    return edge[rng.random(len(edge)) < share]


def _with_adatoms(lattice: Structure, density_per_nm2: float, area_A2: float, rng: np.random.Generator) -> Structure:
    """``lattice`` plus C adatoms above the centres of random hexagons (flagged as clutter).

    A hexagon's centre is ``p_j + p_k - p_i`` for an atom ``i`` and two of its bonded neighbours
    ``j, k``; centres with an atom within 1 A (defects) are skipped.
    """
    neighbours = _neighbours(lattice.positions_A)
    hosts = np.flatnonzero((neighbours >= 0).sum(axis=1) >= 2)
    if len(hosts) == 0:
        return lattice
    chosen = _pick_sites(rng, density_per_nm2, area_A2, hosts)
    bonded = [neighbours[i][neighbours[i] >= 0][:2] for i in chosen]
    centres = np.array([lattice.positions_A[j] + lattice.positions_A[k] - lattice.positions_A[i] for i, (j, k) in zip(chosen, bonded)]).reshape(-1, 2)
    distance, _ = cKDTree(lattice.positions_A).query(centres) if len(centres) else (np.empty(0), None)
    centres = np.unique(centres[distance > 1.0].round(3), axis=0)
    return Structure(
        np.vstack([lattice.positions_A, centres]),
        np.r_[lattice.atomic_numbers, np.full(len(centres), CARBON_Z)],
        np.r_[lattice.clutter, np.ones(len(centres), bool)],
    )


# --------------------------------------------------------------------------- probe


def electron_wavelength_A(beam_energy_kV: float) -> float:
    """Relativistic electron wavelength in A.

    >>> round(float(electron_wavelength_A(60.0)), 4)
    0.0487
    """
    m0c2_eV = 510998.95
    voltage = beam_energy_kV * 1e3
    hc_eVA = 12398.419843
    return float(hc_eVA / np.sqrt(voltage * (2 * m0c2_eV + voltage)))


def _frequencies(shape: tuple[int, int], sampling_A_per_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (rows, cols) in 1/A on an FFT grid (full in rows, half in cols)."""
    k_rows = np.fft.fftfreq(shape[0], sampling_A_per_px)[:, None]
    k_cols = np.fft.rfftfreq(shape[1], sampling_A_per_px)[None, :]
    return k_rows, k_cols


def _aberration_phase(conditions: ImagingConditions, k_rows: np.ndarray, k_cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aperture and aberration phase chi(k) (radians) on a full FFT grid."""
    wavelength = electron_wavelength_A(conditions.beam_energy_kV)
    alpha = wavelength * np.hypot(k_rows, k_cols)  # scattering angle, rad
    azimuth = np.arctan2(k_rows, k_cols)
    c10 = -conditions.defocus_A
    c12 = conditions.astigmatism_A
    c30 = conditions.cs_mm * 1e7
    phi12 = np.deg2rad(conditions.astigmatism_angle_deg)
    chi = 2 * np.pi / wavelength * (0.5 * alpha**2 * (c10 + c12 * np.cos(2 * (azimuth - phi12))) + 0.25 * c30 * alpha**4)
    aperture = alpha <= conditions.convergence_semiangle_mrad * 1e-3
    return aperture, chi


def _gaussian_otf(fwhm_A: float, k_rows: np.ndarray, k_cols: np.ndarray) -> np.ndarray:
    sigma = fwhm_A / (2 * np.sqrt(2 * np.log(2)))
    return np.exp(-2 * np.pi**2 * sigma**2 * (k_rows**2 + k_cols**2))


def probe_intensity(conditions: ImagingConditions, size_px: int = 128) -> np.ndarray:
    """The probe's intensity on a ``size_px`` square grid at the conditions' sampling.

    Centred at ``size_px // 2``, normalised to sum 1, including the source size.

    >>> probe = probe_intensity(ImagingConditions(), 64)
    >>> bool(np.isclose(probe.sum(), 1.0)), tuple(int(i) for i in np.unravel_index(probe.argmax(), probe.shape))
    (True, (32, 32))
    """
    grid = max(size_px, 256)  # a fine enough sampling of the aperture in k-space
    otf = _probe_otf(conditions, (grid, grid), compensate_splat=False)
    probe = np.clip(np.fft.fftshift(np.fft.irfft2(otf, s=(grid, grid))), 0, None)
    start = grid // 2 - size_px // 2
    probe = probe[start : start + size_px, start : start + size_px]
    return probe / probe.sum()


@lru_cache(maxsize=32)
def _probe_otf(conditions: ImagingConditions, shape: tuple[int, int], compensate_splat: bool = True) -> np.ndarray:
    """Fourier transform of the probe intensity (rfft layout), unit DC.

    With ``compensate_splat``, it also divides out the sinc^2 transfer of the
    bilinear splatting used to place atoms between pixels, so that atoms at any
    sub-pixel position are imaged as if rendered exactly (to about 2 %).
    """
    s = conditions.sampling_A_per_px
    k_rows, k_cols = _frequencies(shape, s)
    if conditions.probe_model == "gaussian":
        otf = _gaussian_otf(conditions.gaussian_probe_fwhm_A, k_rows, k_cols).astype(complex)
    else:
        full_rows = np.fft.fftfreq(shape[0], s)[:, None]
        full_cols = np.fft.fftfreq(shape[1], s)[None, :]
        aperture, chi = _aberration_phase(conditions, full_rows, full_cols)
        wave = np.fft.ifft2(aperture * np.exp(-1j * chi))
        otf = np.fft.rfft2(np.abs(wave) ** 2)
        otf /= otf[0, 0]
    otf = otf * _gaussian_otf(conditions.source_size_fwhm_A, k_rows, k_cols)
    if compensate_splat:
        otf = otf / (np.sinc(k_rows * s) ** 2 * np.sinc(k_cols * s) ** 2)
    return otf


# --------------------------------------------------------------------------- image


def _splat(positions_px: np.ndarray, weights: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Place weighted points between pixels by bilinear splatting (first moment exact)."""
    base = np.floor(positions_px).astype(int)
    frac = positions_px - base
    canvas = np.zeros(shape[0] * shape[1])
    for d_row in (0, 1):
        for d_col in (0, 1):
            w = weights * np.where(d_row, frac[:, 0], 1 - frac[:, 0]) * np.where(d_col, frac[:, 1], 1 - frac[:, 1])
            rows, cols = base[:, 0] + d_row, base[:, 1] + d_col
            ok = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
            canvas += np.bincount(rows[ok] * shape[1] + cols[ok], w[ok], minlength=canvas.size)
    return canvas.reshape(shape)


def _random_field(rng: np.random.Generator, shape: tuple[int, int], length_px: float) -> np.ndarray:
    """A smooth Gaussian random field with unit variance and correlation length ``length_px``."""
    k_rows, k_cols = _frequencies(shape, 1.0)
    spectrum = scipy.fft.rfft2(rng.standard_normal(shape)) * np.exp(-2 * np.pi**2 * length_px**2 * (k_rows**2 + k_cols**2))
    smooth = scipy.fft.irfft2(spectrum, s=shape)
    return (smooth - smooth.mean()) / (smooth.std() + 1e-12)


def _drift(positions_px: np.ndarray, drift_px: np.ndarray, n_rows: int) -> np.ndarray:
    """Where atoms appear under linear drift during a row-by-row scan (frame middle fixed).

    The specimen moves by ``drift_px * (t - 1/2)`` with ``t = row / n_rows``; an
    atom at ``r`` appears at row ``Y`` solving ``Y = r + d_row (Y / n - 1/2)``.
    """
    if not np.any(drift_px):
        return positions_px
    rows = (positions_px[:, 0] - drift_px[0] / 2) / (1 - drift_px[0] / n_rows)
    cols = positions_px[:, 1] + drift_px[1] * (rows / n_rows - 0.5)
    return np.column_stack([rows, cols])


@dataclass(frozen=True)
class SimulatedImage:
    """One simulated frame with its ground truth.

    Attributes
    ----------
    image: (H, W) float32 detector output (counts x gain + offset).
    expected_counts: (H, W) float32 noise-free expected counts (None dose: the same as image).
    atoms: (k, 3) float32 labels: row px, col px, class (0 = C, 1 = Si).
    edge_atoms: (j, 3) atoms just outside the frame (within 1 A) whose blobs are cut by the
        edge; they are drawn into the masks, so that every visible blob is labelled, but
        are not in ``atoms``.
    clutter_mask: (H, W) bool, pixels within ``CLUTTER_REACH_A`` of a clutter atom
        (contamination or adatom): where anything found is not of the lattice unless it
        matches a label.
    """

    image: np.ndarray
    expected_counts: np.ndarray
    atoms: np.ndarray
    edge_atoms: np.ndarray
    clutter_mask: np.ndarray


def _margin_px(conditions: ImagingConditions) -> int:
    """Pixels simulated beyond each edge, so that atoms just outside still blur in."""
    reach_A = max(4.0, 4 * abs(conditions.defocus_A) * conditions.convergence_semiangle_mrad * 1e-3)
    return int(np.ceil(reach_A / conditions.sampling_A_per_px))


def simulate_image(sample: SampleSpec, conditions: ImagingConditions, rng: np.random.Generator) -> SimulatedImage:
    """Simulate one HAADF-STEM frame of a random graphene specimen.

    >>> frame = simulate_image(SampleSpec(), ImagingConditions(image_size_px=64), np.random.default_rng(0))
    >>> frame.image.shape, frame.atoms.shape[1]
    ((64, 64), 3)
    """
    margin_A = _margin_px(conditions) * conditions.sampling_A_per_px
    structure = graphene_structure(sample, conditions.field_of_view_A, rng, margin_A=margin_A)
    return image_structure(structure, conditions, rng)


def image_structure(structure: Structure, conditions: ImagingConditions, rng: np.random.Generator) -> SimulatedImage:
    """Image a given structure (positions in A from the field's top-left corner).

    >>> atom = Structure(np.array([[3.2, 3.2]]), np.array([14]))
    >>> frame = image_structure(atom, ImagingConditions(image_size_px=64, dose_e_per_A2=None, background_fraction=0), np.random.default_rng(0))
    >>> tuple(int(i) for i in np.unravel_index(frame.image.argmax(), frame.image.shape))
    (32, 32)
    """
    s = conditions.sampling_A_per_px
    n = conditions.image_size_px
    margin_px = _margin_px(conditions)
    shape = (n + 2 * margin_px, n + 2 * margin_px)
    positions_px = structure.positions_A / s
    numbers = structure.atomic_numbers
    lattice = ~structure.clutter
    if conditions.contamination_coverage > 0 and conditions.contamination_thickness_A > 0:
        extra_px, extra_numbers = contamination_atoms(conditions, shape, rng)
        positions_px = np.vstack([positions_px, extra_px - margin_px])
        numbers = np.r_[numbers, extra_numbers]
        lattice = np.r_[lattice, np.zeros(len(extra_numbers), bool)]
    weights = conditions.carbon_cross_section_A2 * (numbers / CARBON_Z) ** conditions.z_exponent
    positions_px = _drift(positions_px, np.asarray(conditions.drift_A_per_frame) / s, n)
    scatter = _splat(positions_px + margin_px, weights, shape)
    expected = scipy.fft.irfft2(scipy.fft.rfft2(scatter) * _probe_otf(conditions, shape), s=shape)
    if conditions.background_fraction > 0:
        graphene_mean = conditions.carbon_cross_section_A2 * GRAPHENE_ATOMS_PER_A2 * s * s
        smooth = np.clip(1 + 0.3 * _random_field(rng, shape, conditions.background_length_A / s), 0, None)
        expected = expected + conditions.background_fraction * graphene_mean * smooth
    expected = np.clip(expected[margin_px:-margin_px, margin_px:-margin_px], 0, None)
    if conditions.scan_jitter_px > 0:
        rows, cols = np.mgrid[0:n, 0:n].astype(float)
        cols += rng.normal(0, conditions.scan_jitter_px, size=(n, 1))
        expected = map_coordinates(expected, [rows, cols], order=1, mode="nearest")
    if conditions.dose_e_per_A2 is None:  # noiseless: the scattered fraction per pixel
        expected_counts = counts = expected
    else:
        expected_counts = expected * conditions.dose_e_per_A2
        counts = rng.poisson(expected_counts) + rng.normal(0, conditions.read_noise_counts, size=expected.shape)
    image = conditions.detector_gain * counts + conditions.detector_offset
    label_px = positions_px[lattice]
    labels = np.column_stack([label_px, numbers[lattice] == SILICON_Z]).astype(np.float32)
    in_view = ((label_px >= -0.5) & (label_px < n - 0.5)).all(axis=1)
    band_px = EDGE_BAND_A / s
    near = ((label_px >= -0.5 - band_px) & (label_px < n - 0.5 + band_px)).all(axis=1) & ~in_view
    clutter = _clutter_mask(positions_px[~lattice & (numbers != HYDROGEN_Z)], n, CLUTTER_REACH_A / s)
    return SimulatedImage(image.astype(np.float32), expected_counts.astype(np.float32), labels[in_view], labels[near], clutter)


def contamination_thickness_A(conditions: ImagingConditions, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A map (pixels of ``shape``) of amorphous contamination thickness, in A.

    Patches cover ``contamination_coverage`` of the map; the thickness rises from zero at a
    patch's edge to ``contamination_thickness_A`` over one standard deviation of the smooth
    random field that shapes them.

    >>> c = ImagingConditions(contamination_coverage=0.3)
    >>> t = contamination_thickness_A(c, (128, 128), np.random.default_rng(0))
    >>> round(float((t > 0).mean()), 2), float(t.max())
    (0.3, 4.0)
    """
    field = _random_field(rng, shape, conditions.contamination_length_A / conditions.sampling_A_per_px / 2)
    rise = field - np.quantile(field, 1 - conditions.contamination_coverage)
    return conditions.contamination_thickness_A * np.clip(rise, 0, 1)


def contamination_atoms(conditions: ImagingConditions, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (px, in the ``shape`` canvas) and atomic numbers of amorphous hydrocarbon atoms.

    Each pixel holds a Poisson number of C atoms with mean ``AMORPHOUS_CARBON_ATOMS_PER_A3 x
    thickness x pixel area`` and ``contamination_h_per_c`` times as many H atoms, at uniform
    random places within the pixel: random light atoms, not a smooth background.

    >>> xy, z = contamination_atoms(ImagingConditions(contamination_coverage=0.3), (64, 64), np.random.default_rng(0))
    >>> xy.shape[1], sorted(set(z.tolist()))
    (2, [1, 6])
    """
    area_A2 = conditions.sampling_A_per_px**2
    carbon_per_px = AMORPHOUS_CARBON_ATOMS_PER_A3 * contamination_thickness_A(conditions, shape, rng) * area_A2
    positions, numbers = [], []
    for z, mean in ((CARBON_Z, carbon_per_px), (HYDROGEN_Z, carbon_per_px * conditions.contamination_h_per_c)):
        counts = rng.poisson(mean).ravel()
        pixels = np.repeat(np.arange(counts.size), counts)
        centres = np.column_stack(np.unravel_index(pixels, shape)).astype(float)
        positions.append(centres + rng.uniform(-0.5, 0.5, size=centres.shape))
        numbers.append(np.full(len(pixels), z))
    return np.vstack(positions), np.concatenate(numbers)


def _clutter_mask(clutter_px: np.ndarray, size_px: int, reach_px: float) -> np.ndarray:
    """(size, size) bool: pixels within ``reach_px`` of a clutter atom (positions in px)."""
    pad = int(np.ceil(reach_px)) + 1
    occupied = np.zeros((size_px + 2 * pad, size_px + 2 * pad), bool)
    index = np.round(clutter_px).astype(int) + pad
    ok = ((index >= 0) & (index < size_px + 2 * pad)).all(axis=1)
    occupied[index[ok, 0], index[ok, 1]] = True
    if not occupied.any():
        return np.zeros((size_px, size_px), bool)
    return (distance_transform_edt(~occupied) <= reach_px)[pad:-pad, pad:-pad]


def label_mask(atoms: np.ndarray, shape: tuple[int, int], radius_px: tuple[float, float]) -> np.ndarray:
    """Disc masks at labelled atoms: 0 background, 1 C, 2 Si (uint8).

    A disc covers the pixels whose centres lie within the class's radius
    (at least 0.75 px, so every atom marks its nearest pixel).

    >>> mask = label_mask(np.array([[5.0, 5.0, 1.0]]), (11, 11), (2.0, 2.0))
    >>> int(mask[5, 5]), int(mask[5, 7]), int(mask[5, 8])
    (2, 2, 0)
    """
    mask = np.zeros(shape, np.uint8)
    for cls in (0, 1):  # Si drawn last, so it wins where discs touch
        centres = atoms[atoms[:, 2] == cls, :2]
        radius = max(radius_px[cls], 0.75)
        reach = int(np.ceil(radius)) + 1
        offsets = np.arange(-reach, reach + 1)
        rows = np.floor(centres[:, 0])[:, None, None] + offsets[None, :, None]
        cols = np.floor(centres[:, 1])[:, None, None] + offsets[None, None, :]
        inside = (rows - centres[:, 0, None, None]) ** 2 + (cols - centres[:, 1, None, None]) ** 2 <= radius**2
        inside &= (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
        rows, cols = np.broadcast_arrays(rows, cols)
        mask[rows[inside].astype(int), cols[inside].astype(int)] = cls + 1
    return mask


# --------------------------------------------------------------------------- data sets


@dataclass(frozen=True)
class SimulatedDataset:
    """A stack of simulated frames with labels, masks and the conditions that made them.

    Attributes
    ----------
    domain: the domain's name.
    conditions, sample: how the frames were made.
    images: (n, H, W) float32 detector output.
    label_mask: (n, H, W) uint8, 0 background, 1 C, 2 Si.
    atoms: (m, 4) float32 over all frames: frame index, row px, col px, class.
    seed: the seed that makes this data set again.
    clutter_mask: (n, H, W) bool, where clutter (contamination, adatoms) lies; see
        :attr:`SimulatedImage.clutter_mask`.
    """

    domain: str
    conditions: ImagingConditions
    sample: SampleSpec
    images: np.ndarray
    label_mask: np.ndarray
    atoms: np.ndarray
    seed: int
    clutter_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def coordinates(self, index: int) -> np.ndarray:
        """Labels of frame ``index``: (k, 3) row px, col px, class."""
        return self.atoms[self.atoms[:, 0] == index, 1:]

    @property
    def atom_mask(self) -> np.ndarray:
        """One-class "atom" masks, (n, H, W) bool, as the ELIT paper trained on."""
        return self.label_mask > 0

    @property
    def class_masks(self) -> np.ndarray:
        """Per-element masks, (n, 2, H, W) bool: channel 0 C, channel 1 Si.

        Not what two-class members train on: those channels are "atom" (either element) and
        "Si, given an atom" (:func:`elit_utils.ensemble.two_class_masks`), so that channel 0
        stays the paper's one-class map.
        """
        return np.stack([self.label_mask == 1, self.label_mask == 2], axis=1)


#: Radius of the disc that labels each atom in a training mask, Å, for C and for Si: about a quarter
#: of the C-C bond, so the discs of neighbours never touch (the paper's discs: about 2.5 px).
MASK_RADIUS_A: tuple[float, float] = (0.35, 0.35)


def dataset(
    domain: str | Domain,
    n: int,
    seed: int = 0,
    image_size_px: int | None = None,
    mask_radius_A: tuple[float, float] = MASK_RADIUS_A,
    cache: bool = True,
) -> SimulatedDataset:
    """Simulate ``n`` frames of ``domain`` (seeded: same seed, same frames).

    Frame ``i`` depends only on ``(seed, i)``, so a larger ``n`` extends a smaller
    one. Cached under the configuration's hash unless ``cache=False``.

    >>> data = dataset("low_dose", n=1, seed=3, image_size_px=32, cache=False)
    >>> data.coordinates(0).shape[1]
    3
    """
    chosen = get_domain(domain)
    if int(n) < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    conditions = chosen.conditions
    if image_size_px is not None:
        conditions = dataclasses.replace(conditions, image_size_px=int(image_size_px))
    radius_px = tuple(r / conditions.sampling_A_per_px for r in mask_radius_A)

    def build() -> dict[str, np.ndarray]:
        images, masks, atoms, clutter = [], [], [], []
        for index in range(int(n)):
            frame = simulate_image(chosen.sample, conditions, np.random.default_rng([seed, index]))
            images.append(frame.image)
            masks.append(label_mask(np.vstack([frame.atoms, frame.edge_atoms]), frame.image.shape, radius_px))
            atoms.append(np.column_stack([np.full(len(frame.atoms), index, np.float32), frame.atoms]))
            clutter.append(frame.clutter_mask)
        return {
            "images": np.stack(images),
            "label_mask": np.stack(masks),
            "atoms": np.concatenate(atoms).astype(np.float32),
            "clutter_mask": np.stack(clutter),
        }

    config = {"version": SIMULATOR_VERSION, "domain": chosen, "conditions": conditions, "n": int(n), "seed": seed, "mask_radius_A": mask_radius_A}
    arrays = cached_arrays("simulate", config, build) if cache else build()
    return SimulatedDataset(chosen.name, conditions, chosen.sample, arrays["images"], arrays["label_mask"], arrays["atoms"], seed, arrays["clutter_mask"])


# --------------------------------------------------------------------------- checks


def bond_lengths_A(structure: Structure) -> np.ndarray:
    """Lengths of all bonds (atom pairs closer than 1.75 A), in A.

    >>> s = graphene_structure(SampleSpec(thermal_jitter_A=0, vacancy_density_per_nm2=0, divacancy_density_per_nm2=0), 20.0, np.random.default_rng(0))
    >>> round(float(np.median(bond_lengths_A(s))), 3)
    1.42
    """
    pairs = cKDTree(structure.positions_A).query_pairs(BOND_CUTOFF_A, output_type="ndarray")
    return np.linalg.norm(structure.positions_A[pairs[:, 0]] - structure.positions_A[pairs[:, 1]], axis=1)


def probe_fwhm_A(conditions: ImagingConditions, size_px: int = 256) -> float:
    """Equivalent full width at half maximum of the probe, in A: 2 sqrt(area above half max / pi).

    >>> import dataclasses
    >>> gaussian = dataclasses.replace(ImagingConditions(), probe_model="gaussian", gaussian_probe_fwhm_A=1.0, source_size_fwhm_A=0.0, sampling_A_per_px=0.02)
    >>> round(probe_fwhm_A(gaussian), 1)
    1.0
    """
    probe = probe_intensity(conditions, size_px)
    area_A2 = (probe >= probe.max() / 2).sum() * conditions.sampling_A_per_px**2
    return float(2 * np.sqrt(area_A2 / np.pi))
