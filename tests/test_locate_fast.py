"""locate's fast atom finding equals the straightforward one it replaced (kept here, as the reference):
h-maxima and watershed on the whole image, and scipy.ndimage's labelled statistics."""

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from elit_utils import locate, simulate
from elit_utils.ensemble import uncertainty_maps


def reference_atom_regions(probability, threshold=0.5, min_prominence=locate.MIN_PROMINENCE):
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    mask = probability > threshold
    regions, count = ndimage.label(mask)
    if count == 0 or min_prominence >= 1:
        return regions, count
    peaks = h_maxima(probability.astype(np.float64), min_prominence).astype(bool) & mask
    markers, n_peaks = ndimage.label(peaks)
    unmarked = np.setdiff1d(np.arange(1, count + 1), regions[peaks])
    for k, position in enumerate(ndimage.maximum_position(probability, regions, unmarked)):
        markers[position] = n_peaks + 1 + k
    if n_peaks + len(unmarked) == count:
        return regions, count
    return watershed(-probability, markers, mask=mask), n_peaks + len(unmarked)


def reference_locate_atoms(prediction, threshold=0.5, min_area_px=1, min_prominence=locate.MIN_PROMINENCE):
    mean = np.asarray(prediction.mean, float)
    regions, count = reference_atom_regions(mean, threshold, min_prominence)
    index = np.arange(1, count + 1)
    kept = index[ndimage.sum_labels(np.ones_like(mean), regions, index) >= min_area_px]
    centres = np.array(ndimage.center_of_mass(mean, regions, kept), float).reshape(-1, 2)
    means = [np.asarray(ndimage.mean(values, regions, kept)).reshape(-1) for values in (prediction.mutual_information, prediction.entropy, prediction.variance)]
    peaks = np.array([ndimage.maximum(member, regions, kept) for member in prediction.members], float).reshape(len(prediction.members), -1)
    si = None
    if getattr(prediction, "class_members", None) is not None:
        si = np.array([ndimage.mean(member, regions, kept) for member in prediction.class_members], float).reshape(len(prediction.class_members), -1)
    return centres, means, peaks, si


def gaussian_map(rng, size_px=64, n_blobs=12, quantum=None):
    """Blobs of random width and height (some faint, some touching, some cut by the edge) on a
    background with a random sub-threshold floor; ``quantum`` rounds the values (plateaus, ties)."""
    rows, cols = np.mgrid[0:size_px, 0:size_px]
    probability = np.full((size_px, size_px), rng.uniform(0, 0.5))
    for _ in range(n_blobs):
        row, col = rng.uniform(-3, size_px + 3, 2)
        width_px = rng.uniform(1.0, 4.0)
        probability += rng.uniform(0.2, 1.0) * np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * width_px**2))
    probability += rng.uniform(0, 0.05) * rng.standard_normal(probability.shape)
    probability = np.clip(probability, 0, 1)
    return probability if quantum is None else np.round(probability / quantum) * quantum


def simulated_maps(size_px=64):
    """Simulated frames scaled to 0..1 and blurred atom masks: graphene's touching, noisy blobs."""
    data = simulate.dataset("dopant_rich", n=2, seed=3, image_size_px=size_px, cache=False)
    images = [(image - image.min()) / np.ptp(image) for image in data.images]
    masks = [ndimage.gaussian_filter(mask.astype(float), 1.5) * 1.4 for mask in data.atom_mask]
    return images + masks


def assert_same_regions(probability, threshold, min_prominence):
    regions, count = locate.atom_regions(probability, threshold, min_prominence)
    expected, expected_count = reference_atom_regions(probability, threshold, min_prominence)
    assert count == expected_count
    np.testing.assert_array_equal(regions, expected)


@pytest.mark.parametrize("quantum", [None, 0.05, 0.1])
def test_atom_regions_equal_whole_image_h_maxima_and_watershed(quantum):
    rng = np.random.default_rng(0)
    for _ in range(40):
        probability = gaussian_map(rng, size_px=int(rng.integers(24, 72)), n_blobs=int(rng.integers(0, 25)), quantum=quantum)
        threshold = float(rng.choice([0.1, 0.3, 0.5, 0.7, 0.9]))
        min_prominence = float(rng.choice([0.02, 0.1, 0.2, 0.3, 0.5, 1.0, 1.5]))
        assert_same_regions(probability, threshold, min_prominence)


def test_atom_regions_equal_the_reference_on_simulated_frames_and_special_maps():
    maps = simulated_maps()
    maps += [np.zeros((16, 16)), np.full((16, 16), 0.8), np.eye(12) * 0.9, np.eye(12)[::-1] * 0.9 + np.eye(12) * 0.7]  # empty, flat, diagonal ties
    twins = np.zeros((12, 20))
    twins[3:6, 2:6] = twins[3:6, 10:14] = 0.6
    twins[4, 6:10] = 0.55  # two equal faint tops joined above the threshold
    maps.append(twins)
    near_tie = np.zeros((8, 8))
    near_tie[2:5, 2:5] = 0.9
    near_tie[5, 5] = np.nextafter(0.9, 0)  # h_maxima marks it too (its reconstruction is 0.9's, less h): a second peak
    near_tie[4, 5] = 0.6  # in the same region
    corners = np.zeros((8, 8))
    corners[1:4, 1:4] = corners[4:7, 4:7] = 0.9  # touch at a corner: two 4-connected regions, one 8-connected cluster
    corners[2, 2] = 0.95
    maps += [near_tie, corners]
    for probability in maps:
        for threshold in (0.1, 0.3, 0.5, 0.7, 0.9):
            for min_prominence in (0.05, 0.2, 0.5, 1.0):
                assert_same_regions(probability, threshold, min_prominence)
    float32_twins = np.zeros((100, 100), np.float32)  # large enough for the cluster-by-cluster path
    float32_twins[2, 2], float32_twins[2, 3], float32_twins[2, 4] = 0.8, 0.6, 0.95  # float32(0.6) is above 0.6, yet not in the mask
    float32_twins[5, 10:13] = float32_twins[5, 14:17] = 0.9
    float32_twins[5, 13] = 0.65  # a region that splits, so the labels come from the markers
    assert_same_regions(float32_twins, 0.6, 0.2)
    with pytest.raises(ValueError, match="min_prominence"):
        locate.atom_regions(maps[0], 0.5, 0.0)
    for bad in (np.nan, np.inf):
        broken = maps[0].copy()
        broken[3, 3] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            locate.atom_regions(broken)


def test_a_faint_peak_is_judged_against_the_landscape_below_the_threshold(monkeypatch):
    """Whether h_maxima marks a peak less than threshold + h high depends on the path to a higher
    peak below the threshold: a faint peak (0.6) beside a bright one (0.95), joined by a sub-threshold
    ridge at 0.45 (less than 0.2 below 0.6), is not marked; across a 0.3 valley it is. Alone in its
    crop both would be marked: the window grows until the ridge and the bright peak are inside,
    and no call looks at the whole image."""
    import skimage.morphology

    margins, shapes = [], []
    grown, h_maxima = locate._grown, skimage.morphology.h_maxima
    monkeypatch.setattr(locate, "_grown", lambda box, margin, shape: margins.append(margin) or grown(box, margin, shape))
    monkeypatch.setattr(skimage.morphology, "h_maxima", lambda image, h: shapes.append(image.shape) or h_maxima(image, h))
    for ridge, marked in ((0.45, False), (0.3, True)):
        probability = np.full((100, 200), 0.1)
        probability[40:50, 40:85] = ridge
        probability[44:46, 43:45] = 0.6  # the faint peak
        probability[44:46, 79:81] = 0.95
        probability[80:82, 20:24] = 0.9  # a bright atom that splits, so the labels are those of the peaks
        probability[80:82, 26:28] = 0.9
        probability[81, 24:26] = 0.6
        shapes.clear()
        peaks = locate._prominent_peaks(probability, probability > 0.5, 0.5, 0.2)
        assert peaks[44, 43] == marked and probability.shape not in shapes
        assert_same_regions(probability, 0.5, 0.2)
    assert max(margins) >= 32  # the window did grow past the bright peak 36 px away


def test_locate_atoms_equals_ndimage_statistics_for_one_and_two_class_ensembles():
    rng = np.random.default_rng(1)
    maps = [gaussian_map(rng, 48, 14, quantum) for quantum in (None, None, 0.05)] + simulated_maps(48)[:2]
    for base in maps:
        members = np.clip(base + 0.1 * rng.standard_normal((3, *base.shape)), 0, 1)
        class_members = rng.uniform(0, 1, members.shape) if rng.uniform() < 0.5 else None
        prediction = uncertainty_maps(members, 0.1, class_members)
        for threshold, min_area_px in ((0.3, 1), (0.5, 3), (0.8, 1)):
            table = locate.locate_atoms(prediction, threshold, min_area_px)
            centres, means, peaks, si = reference_locate_atoms(prediction, threshold, min_area_px)
            np.testing.assert_allclose(table.coordinates_px, centres, rtol=1e-12)
            for found, expected in zip((table.mutual_information, table.entropy, table.variance), means):
                np.testing.assert_allclose(found, expected, rtol=1e-12)
            np.testing.assert_array_equal(table.member_peaks, peaks)
            np.testing.assert_array_equal(table.vote_fraction, (peaks > threshold).mean(axis=0))
            if si is None:
                assert table.si_probability is None
            else:
                np.testing.assert_allclose(table.si_probability, si.mean(axis=0), rtol=1e-12)
                np.testing.assert_allclose(table.si_uncertainty, si.std(axis=0), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(locate.find_atoms(prediction.mean, threshold, min_area_px), centres, rtol=1e-12)


def test_locate_atoms_of_an_empty_frame_is_an_empty_table():
    prediction = SimpleNamespace(**vars(uncertainty_maps(np.zeros((2, 16, 16)), 0.1)))
    table = locate.locate_atoms(prediction)
    assert len(table) == 0 and table.member_peaks.shape == (2, 0)
