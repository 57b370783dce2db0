import dataclasses

import numpy as np
import pytest

from elit_utils import simulate
from elit_utils.simulate import DOMAINS, ImagingConditions, SampleSpec, Structure

CLEAN = SampleSpec(thermal_jitter_A=0.0, vacancy_density_per_nm2=0, divacancy_density_per_nm2=0, dopant_density_per_nm2=0)
NOISELESS = ImagingConditions(image_size_px=64, dose_e_per_A2=None, background_fraction=0.0)


def test_lattice_bonds_are_1_42_A_and_three_per_atom():
    structure = simulate.graphene_structure(CLEAN, 30.0, np.random.default_rng(1))
    bonds = simulate.bond_lengths_A(structure)
    assert np.allclose(bonds, 1.42, rtol=0.01)
    interior = ((structure.positions_A > 3) & (structure.positions_A < 27)).all(axis=1)
    neighbours = (simulate._neighbours(structure.positions_A) >= 0).sum(axis=1)
    assert (neighbours[interior] == 3).all()


def test_areal_density_matches_graphene():
    structure = simulate.graphene_structure(CLEAN, 50.0, np.random.default_rng(2))
    inside = ((structure.positions_A >= 0) & (structure.positions_A < 50)).all(axis=1).sum()
    assert inside / 50.0**2 == pytest.approx(simulate.GRAPHENE_ATOMS_PER_A2, rel=0.03)


def test_strain_stretches_bonds():
    strained = dataclasses.replace(CLEAN, strain=(0.05, 0.05, 0.0))
    bonds = simulate.bond_lengths_A(simulate.graphene_structure(strained, 30.0, np.random.default_rng(0)))
    assert np.median(bonds) == pytest.approx(1.42 * 1.05, rel=0.01)


@pytest.mark.parametrize(("fractions", "size"), [((1, 0, 0), 1), ((0, 1, 0), 2), ((0, 0, 1), 3)])
def test_dopant_clusters_have_the_requested_size(fractions, size):
    sample = dataclasses.replace(CLEAN, dopant_density_per_nm2=0.2, dopant_cluster_fractions=fractions, rotation_deg=0.0)
    structure = simulate.graphene_structure(sample, 60.0, np.random.default_rng(5))
    silicon = structure.positions_A[structure.atomic_numbers == 14]
    expected_sites = 0.2 * 60.0**2 / 100
    assert len(silicon) == pytest.approx(expected_sites * size, rel=0.5)
    # every Si has exactly size - 1 Si neighbours within a bond (clusters far apart)
    from scipy.spatial import cKDTree

    counts = np.array([len(n) - 1 for n in cKDTree(silicon).query_ball_point(silicon, simulate.BOND_CUTOFF_A)])
    assert np.median(counts) == {1: 0, 2: 1, 3: 1}[size] or (size == 3 and np.mean(counts) > 1.2)


def test_vacancies_remove_the_expected_number_of_atoms():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    perfect = simulate.graphene_structure(CLEAN, 80.0, rng_a)
    holes = simulate.graphene_structure(dataclasses.replace(CLEAN, vacancy_density_per_nm2=0.5), 80.0, rng_b)
    missing = len(perfect) - len(holes)
    assert missing == pytest.approx(0.5 * 80.0**2 / 100, rel=0.3)


def test_isolated_atom_peaks_within_half_a_pixel_of_its_label():
    rng = np.random.default_rng(0)
    for _ in range(20):
        position_A = rng.uniform(2.5, 3.9, size=2)
        frame = simulate.image_structure(Structure(position_A[None], np.array([6])), NOISELESS, rng)
        peak = np.array(np.unravel_index(frame.image.argmax(), frame.image.shape))
        label = frame.atoms[0, :2]
        assert np.all(np.abs(peak - label) <= 0.5 + 1e-6)
        window = frame.image[peak[0] - 15 : peak[0] + 16, peak[1] - 15 : peak[1] + 16]
        rows, cols = np.mgrid[-15:16, -15:16]
        centroid = peak + np.array([(rows * window).sum(), (cols * window).sum()]) / window.sum()
        assert np.linalg.norm(centroid - label) < 0.1


def test_silicon_is_brighter_than_carbon_by_z_to_the_gamma():
    frames = [simulate.image_structure(Structure(np.array([[3.2, 3.2]]), np.array([z])), NOISELESS, np.random.default_rng(0)) for z in (6, 14)]
    ratio = frames[1].image.max() / frames[0].image.max()
    assert ratio == pytest.approx((14 / 6) ** NOISELESS.z_exponent, rel=0.01)


def test_counts_match_the_dose():
    # a Gaussian probe keeps all the intensity inside the small field (an Airy probe's
    # tails carry about 5 % beyond 3 A); the graphene test below uses the optics probe
    conditions = dataclasses.replace(NOISELESS, dose_e_per_A2=1e6, read_noise_counts=0.0, probe_model="gaussian")
    frame = simulate.image_structure(Structure(np.array([[3.2, 3.2]]), np.array([6])), conditions, np.random.default_rng(0))
    expected_total = conditions.dose_e_per_A2 * conditions.carbon_cross_section_A2
    assert frame.expected_counts.sum() == pytest.approx(expected_total, rel=0.01)
    assert frame.image.sum() == pytest.approx(expected_total, rel=0.03)


def test_mean_counts_of_a_graphene_frame_match_the_dose():
    conditions = dataclasses.replace(DOMAINS["source"].conditions, image_size_px=128, background_fraction=0.0, dose_e_per_A2=2e5)
    frame = simulate.simulate_image(CLEAN, conditions, np.random.default_rng(1))
    graphene_counts_per_px = conditions.dose_e_per_A2 * conditions.carbon_cross_section_A2 * simulate.GRAPHENE_ATOMS_PER_A2 * conditions.sampling_A_per_px**2
    assert frame.image.mean() == pytest.approx(graphene_counts_per_px, rel=0.03)
    noise = frame.image - frame.expected_counts
    assert noise.var() == pytest.approx(frame.expected_counts.mean() + conditions.read_noise_counts**2, rel=0.05)


def test_same_seed_same_data_and_frames_extend():
    a = simulate.dataset("drift", n=3, seed=7, image_size_px=48, cache=False)
    b = simulate.dataset("drift", n=3, seed=7, image_size_px=48, cache=False)
    c = simulate.dataset("drift", n=2, seed=8, image_size_px=48, cache=False)
    longer = simulate.dataset("drift", n=4, seed=7, image_size_px=48, cache=False)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.atoms, b.atoms)
    assert not np.array_equal(a.images[:2], c.images)
    np.testing.assert_array_equal(longer.images[:3], a.images)


def test_dataset_is_cached_with_its_record(tmp_path, monkeypatch):
    monkeypatch.setenv("ELIT_CACHE", str(tmp_path))
    first = simulate.dataset("source", n=2, seed=0, image_size_px=32)
    assert len(list((tmp_path / "simulate").glob("*.npz"))) == 1
    second = simulate.dataset("source", n=2, seed=0, image_size_px=32)
    np.testing.assert_array_equal(first.images, second.images)


def test_masks_agree_with_coordinates():
    data = simulate.dataset("dopant_rich", n=2, seed=1, image_size_px=96, cache=False)
    for index in range(len(data)):
        atoms = data.coordinates(index)
        nearest = np.round(atoms[:, :2]).astype(int).clip(0, 95)
        assert (data.label_mask[index][nearest[:, 0], nearest[:, 1]] == atoms[:, 2] + 1).mean() > 0.97
    assert data.class_masks.shape == (2, 2, 96, 96)
    assert data.atom_mask.sum() == (data.label_mask > 0).sum()
    radius_px = 0.35 / data.conditions.sampling_A_per_px
    per_atom = data.atom_mask.sum() / len(data.atoms)
    assert per_atom == pytest.approx(np.pi * radius_px**2, rel=0.25)


def test_labels_cover_exactly_the_atoms_in_view():
    data = simulate.dataset("source", n=1, seed=0, image_size_px=64, cache=False)
    atoms = data.coordinates(0)
    assert atoms[:, :2].min() >= -0.5 and atoms[:, :2].max() < 63.5
    assert len(atoms) == pytest.approx(simulate.GRAPHENE_ATOMS_PER_A2 * data.conditions.field_of_view_A**2, rel=0.15)


def test_drift_moves_labels_with_the_atoms():
    still = dataclasses.replace(NOISELESS, image_size_px=128)
    moving = dataclasses.replace(still, drift_A_per_frame=(0.0, 4.0))
    grid = np.stack(np.meshgrid(np.arange(3.0, 10.5, 1.5), np.arange(3.5, 10.0, 1.5), indexing="ij"), -1).reshape(-1, 2)
    structure = Structure(grid, np.full(len(grid), 6))
    frames = [simulate.image_structure(structure, c, np.random.default_rng(4)) for c in (still, moving)]
    shift = frames[1].atoms[:, 1] - frames[0].atoms[:, 1]
    rows = frames[0].atoms[:, 0]
    slope = np.polyfit(rows, shift, 1)[0]
    assert slope == pytest.approx(4.0 / still.sampling_A_per_px / 128, rel=0.05)
    # and the image follows the labels: its peaks sit on the moved labels
    peaks = np.round(frames[1].atoms[:, :2]).astype(int)
    ok = ((peaks > 2) & (peaks < 125)).all(axis=1)
    image = frames[1].image
    local_max = np.array([image[r, c] >= image[r - 2 : r + 3, c - 2 : c + 3].max() * 0.95 for r, c in peaks[ok]])
    assert local_max.mean() > 0.95


def test_every_domain_simulates():
    for name in DOMAINS:
        data = simulate.dataset(name, n=1, seed=0, image_size_px=32, cache=False)
        assert np.isfinite(data.images).all() and data.images.dtype == np.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampling_A_per_px": 0.001}, "nm or pm"),
        ({"sampling_A_per_px": 10.0}, "nm or pm"),
        ({"beam_energy_kV": 60000}, "kV"),
        ({"dose_e_per_A2": -1.0}, "dose"),
        ({"probe_model": "lorentzian"}, "probe_model"),
        ({"contamination_coverage": 1.5}, "fraction"),
        ({"image_size_px": 8}, "image_size_px"),
    ],
)
def test_bad_conditions_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImagingConditions(**kwargs)


def test_bad_sample_and_dataset_arguments_are_refused():
    with pytest.raises(ValueError, match="lattice constant"):
        SampleSpec(lattice_constant_A=24.6)
    with pytest.raises(ValueError, match="Unknown domain"):
        simulate.dataset("moon", n=1)
    with pytest.raises(ValueError, match="positive number"):
        simulate.dataset("source", n=0)


def test_probe_width_follows_the_optics():
    source = DOMAINS["source"].conditions
    diffraction_limited = dataclasses.replace(source, source_size_fwhm_A=0.0)
    # Rayleigh-type estimate: FWHM of an Airy disc ~ 0.51 lambda / alpha
    airy = 0.51 * simulate.electron_wavelength_A(60.0) / 0.030
    assert simulate.probe_fwhm_A(diffraction_limited) == pytest.approx(airy, rel=0.05)
    assert simulate.probe_fwhm_A(dataclasses.replace(source, defocus_A=80.0)) > 1.5 * simulate.probe_fwhm_A(source)


def test_structure_exports_to_ase():
    structure = simulate.graphene_structure(CLEAN, 10.0, np.random.default_rng(0))
    atoms = structure.to_ase()
    assert len(atoms) == len(structure) and set(atoms.get_atomic_numbers()) == {6}


# --------------------------------------------------------------------------- clutter


def _contaminated(coverage: float, seed: int = 0, h_per_c: float = 0.0) -> simulate.SimulatedImage:
    conditions = dataclasses.replace(NOISELESS, image_size_px=128, contamination_coverage=coverage, contamination_h_per_c=h_per_c)
    return simulate.simulate_image(CLEAN, conditions, np.random.default_rng(seed))


def test_contamination_adds_light_atoms_only_where_the_clutter_mask_says():
    clean, dirty = _contaminated(0.0), _contaminated(0.3)
    # the lattice and its labels are the same: contamination is drawn after the specimen
    assert np.array_equal(clean.atoms, dirty.atoms) and not clean.clutter_mask.any()
    assert 0.1 < dirty.clutter_mask.mean() < 0.4
    # away from the clutter (by more than the probe's reach) the image does not change
    from scipy.ndimage import binary_dilation

    near = binary_dilation(dirty.clutter_mask, iterations=20)
    difference = np.abs(dirty.image - clean.image) / clean.image.max()
    assert difference[~near].max() < 0.02 and difference[dirty.clutter_mask].mean() > 0.05


def test_contamination_thickness_sets_the_number_of_atoms():
    conditions = ImagingConditions(contamination_coverage=0.5, contamination_thickness_A=3.0, contamination_h_per_c=1.0)
    positions_px, numbers = simulate.contamination_atoms(conditions, (800, 800), np.random.default_rng(1))
    thickness = simulate.contamination_thickness_A(conditions, (800, 800), np.random.default_rng(1))
    expected_carbon = simulate.AMORPHOUS_CARBON_ATOMS_PER_A3 * thickness.sum() * 0.1**2
    assert expected_carbon > 500  # Poisson counts: 3 standard deviations are under 14 %
    assert (numbers == 6).sum() == pytest.approx(expected_carbon, rel=0.14)
    assert (numbers == 1).sum() == pytest.approx((numbers == 6).sum(), rel=0.2)  # one H per C asked
    assert (positions_px >= -0.5).all() and (positions_px < 799.5).all()


def test_hydrogen_barely_shows_in_haadf():
    carbon_only, hydrocarbon = _contaminated(0.3), _contaminated(0.3, h_per_c=1.0)
    extra = (hydrocarbon.image - carbon_only.image)[carbon_only.clutter_mask].mean()
    contamination = carbon_only.image[carbon_only.clutter_mask].mean() - _contaminated(0.0).image[carbon_only.clutter_mask].mean()
    assert 0 < extra < 0.15 * contamination  # (1/6)^1.7 = 5 % of a C atom's signal per H


def test_adatoms_sit_in_hexagon_centres_and_are_clutter_not_labels():
    sample = dataclasses.replace(CLEAN, adatom_density_per_nm2=2.0)
    structure = simulate.graphene_structure(sample, 40.0, np.random.default_rng(0))
    adatoms = structure.positions_A[structure.clutter]
    lattice = structure.positions_A[~structure.clutter]
    assert len(adatoms) == pytest.approx(2.0 * 40.0**2 / 100, rel=0.5)
    interior = ((adatoms > 3) & (adatoms < 37)).all(axis=1)
    distances, _ = simulate.cKDTree(lattice).query(adatoms[interior], k=6)
    assert interior.sum() > 5 and np.allclose(distances, 1.42, atol=0.05)  # six atoms of a hexagon around each
    frame = simulate.image_structure(structure, dataclasses.replace(NOISELESS, image_size_px=400), np.random.default_rng(0))
    assert len(frame.atoms) <= (~structure.clutter).sum()
    in_view = adatoms[((adatoms / 0.1 >= 0) & (adatoms / 0.1 < 399.5)).all(axis=1)] / 0.1
    assert len(in_view) and frame.clutter_mask[tuple(np.round(in_view).astype(int).T)].all()
    labelled = simulate.cKDTree(frame.atoms[:, :2]).query(in_view)[0]
    assert labelled.min() > 10  # no label within 1 A of an adatom


def test_grain_boundary_joins_two_rotated_grains_without_overlapping_atoms():
    sample = dataclasses.replace(CLEAN, grain_misorientation_deg=21.8, rotation_deg=0.0)
    structure = simulate.graphene_structure(sample, 50.0, np.random.default_rng(3))
    distances, _ = simulate.cKDTree(structure.positions_A).query(structure.positions_A, k=2)
    assert distances[:, 1].min() >= simulate.GRAIN_MERGE_A
    single = simulate.graphene_structure(dataclasses.replace(sample, grain_misorientation_deg=0.0), 50.0, np.random.default_rng(3))
    interior = lambda s: ((s.positions_A > 3) & (s.positions_A < 47)).all(axis=1)  # noqa: E731
    odd = lambda s: ((simulate._neighbours(s.positions_A) >= 0).sum(axis=1) != 3)[interior(s)].sum()  # noqa: E731
    assert odd(single) == 0 and odd(structure) > 5  # the boundary's broken rings, nowhere else


def test_edge_dopants_sit_at_hole_edges():
    sample = dataclasses.replace(CLEAN, hole_density_per_nm2=0.3, edge_dopant_fraction=1.0)
    structure = simulate.graphene_structure(sample, 60.0, np.random.default_rng(2))
    silicon = structure.atomic_numbers == simulate.SILICON_Z
    bonds = (simulate._neighbours(structure.positions_A) >= 0).sum(axis=1)
    assert silicon.sum() > 5 and (bonds[silicon] == 2).all()


def test_contaminated_domain_covers_a_fifth_to_a_half_of_the_field():
    data = simulate.dataset("contaminated", n=4, seed=0, image_size_px=128, cache=False)
    assert 0.15 < data.clutter_mask.mean() < 0.5
    assert data.clutter_mask.shape == data.images.shape and data.clutter_mask.dtype == bool
    assert (data.atoms[:, 3] == 1).any()  # Si at edges and substitutional sites


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"edge_dopant_fraction": 1.5}, "edge_dopant_fraction"),
        ({"grain_misorientation_deg": 45.0}, "repeats every 60"),
        ({"adatom_density_per_nm2": -1}, "adatom"),
    ],
)
def test_bad_clutter_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SampleSpec(**kwargs)


def _validate_abtem():
    """benchmarks/validate_abtem.py as a module (it needs abTEM only to run multislice, not to build its cell)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("validate_abtem", Path(__file__).resolve().parents[1] / "benchmarks" / "validate_abtem.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_abtem_reference_cell_wraps_no_atom_of_the_flake_onto_another():
    validate_abtem = _validate_abtem()
    flake = validate_abtem.flake(12.0)
    assert ((flake.positions_A < 0) | (flake.positions_A >= 12.0)).any()  # the flake reaches beyond the field, as in our images
    atoms = validate_abtem.abtem_atoms(flake, np.full(len(flake), validate_abtem.SHEET_Z_A), 12.0)
    distances_A = atoms.get_all_distances(mic=True)  # through the periodic cell, as abTEM sees them
    np.fill_diagonal(distances_A, np.inf)
    assert distances_A.min() == pytest.approx(2.46 / np.sqrt(3), abs=0.01)  # the C-C bond: no closer pair


def test_abtem_reference_contamination_keeps_its_atoms_apart_in_depth():
    """Amorphous carbon has no two atoms closer than about a bond; a static multislice would image such pairs coherently."""
    validate_abtem = _validate_abtem()
    conditions = ImagingConditions(image_size_px=40, sampling_A_per_px=0.3)
    structure, heights_A, _ = validate_abtem.contaminated(validate_abtem.flake(12.0), conditions)
    xyz_A = np.column_stack([structure.positions_A, heights_A])[structure.clutter]
    distances_A = np.linalg.norm(xyz_A[:, None] - xyz_A[None], axis=2)
    np.fill_diagonal(distances_A, np.inf)
    assert len(xyz_A) > 10 and (distances_A.min(axis=1) < 1.0).mean() < 0.1  # independent uniform heights: 65 %


@pytest.mark.parametrize("silicon_brightness", [4.2, 5.0])
def test_abtem_contamination_ratio_compares_carbon_with_carbon_whatever_a_dopant_under_the_patch(silicon_brightness):
    validate_abtem = _validate_abtem()
    thickness_A = np.zeros((40, 40))
    thickness_A[10:30, 10:30] = 3.0
    lattice = Structure(np.array([[6.0, 6.0]]), np.array([simulate.SILICON_Z]))  # at pixel (20, 20) of a 0.3 A/px scan: under the patch
    clean = np.ones((40, 40))
    clean[19:22, 19:22] = silicon_brightness
    ratios = validate_abtem.compare_contamination({"image": clean + 0.5 * (thickness_A > 0)}, {"image": clean}, thickness_A, lattice, 0.3)
    assert ratios["image"] == pytest.approx(0.5)  # the patch adds half of graphene's signal; the Si's Z exponent plays no part
