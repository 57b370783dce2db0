import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from elit_utils.io import ImageLoadError, check_sampling, load_image, normalize_image

from .conftest import EXPERIMENTAL, needs_experimental

FRAME = np.random.default_rng(0).random((24, 32)).astype(np.float64) * 100


def test_npy_round_trip_gives_float32_and_the_given_pixel_size(tmp_path):
    np.save(tmp_path / "a.npy", FRAME)
    loaded = load_image(tmp_path / "a.npy", sampling_A_per_px=0.08)
    assert loaded.image.dtype == np.float32 and loaded.image.shape == (24, 32)
    np.testing.assert_allclose(loaded.image, FRAME, rtol=1e-6)
    assert loaded.sampling_A_per_px == 0.08 and loaded.metadata["sampling_source"] == "argument"


def test_png_greyscale_and_rgb(tmp_path):
    grey = (FRAME / FRAME.max() * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png").image, grey)
    assert load_image(tmp_path / "rgb.png").image.shape == (24, 32)


def test_tiff_with_imagej_pixel_size_in_nm(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, FRAME.astype(np.float32), imagej=True, resolution=(1 / 0.008, 1 / 0.008), metadata={"unit": "nm"})
    loaded = load_image(path, sampling_A_per_px=0.5)
    assert loaded.sampling_A_per_px == pytest.approx(0.08, rel=1e-4)
    assert loaded.metadata["sampling_source"] == "file"


def test_hdf5_dataset_choice_and_listing(tmp_path):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as handle:
        handle["haadf"] = FRAME
        handle["haadf"].attrs["sampling_A_per_px"] = 0.1
        handle["bf"] = FRAME * 2
    with pytest.raises(ImageLoadError, match=r"2 image-like datasets \(bf, haadf\).*dataset="):
        load_image(path)
    loaded = load_image(path, dataset="haadf")
    assert loaded.sampling_A_per_px == pytest.approx(0.1)
    with pytest.raises(ImageLoadError, match="no dataset 'adf'"):
        load_image(path, dataset="adf")


def test_stack_needs_a_frame_index(tmp_path):
    np.save(tmp_path / "s.npy", np.stack([FRAME, FRAME + 1, FRAME + 2]))
    with pytest.raises(ImageLoadError, match=r"stack of 3 frames.*frame=0\.\.2"):
        load_image(tmp_path / "s.npy")
    np.testing.assert_allclose(load_image(tmp_path / "s.npy", frame=2).image, FRAME + 2, rtol=1e-6)
    with pytest.raises(ImageLoadError, match="out of range"):
        load_image(tmp_path / "s.npy", frame=3)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.where(FRAME > 50, np.nan, FRAME), "NaN/inf"),
        (np.full((8, 8), 3.0), "constant"),
        (np.zeros((2, 3, 4, 5)), "not a 2D image"),
        (FRAME.astype(complex), "not real numbers"),
    ],
)
def test_bad_arrays_get_specific_errors(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ImageLoadError, match=message) as error:
        load_image(tmp_path / "bad.npy")
    assert "bad.npy" in str(error.value)


def test_missing_unknown_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npy"):
        load_image(tmp_path / "nothere.npy")
    (tmp_path / "a.jpg2").write_bytes(b"x")
    with pytest.raises(ImageLoadError, match="unknown image format.*Convert"):
        load_image(tmp_path / "a.jpg2")
    for name in ("c.npy", "c.tif", "c.png", "c.h5", "c.dm4"):
        (tmp_path / name).write_bytes(b"\x00garbage" * 10)
        with pytest.raises(ImageLoadError, match="could not be read|corrupt"):
            load_image(tmp_path / name)


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "p.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageLoadError, match="could not be read"):
        load_image(tmp_path / "p.npy")


def test_pixel_size_required_and_unit_checks(tmp_path):
    np.save(tmp_path / "a.npy", FRAME)
    with pytest.raises(ImageLoadError, match="no pixel size.*sampling_A_per_px"):
        load_image(tmp_path / "a.npy", require_sampling=True)
    with pytest.raises(ImageLoadError, match="nm/px"):
        load_image(tmp_path / "a.npy", sampling_A_per_px=0.0008)
    with pytest.raises(ImageLoadError, match="pm/px"):
        check_sampling(8.0)
    with pytest.raises(ImageLoadError, match="positive"):
        check_sampling(-0.1)


def test_normalize_is_robust_and_per_frame():
    stack = np.stack([FRAME, FRAME * 10 + 5])
    stack[0, 0, 0] = 1e6  # a hot pixel
    scaled = normalize_image(stack)
    assert scaled.shape == stack.shape and scaled.min() == 0.0 and scaled.max() == 1.0
    np.testing.assert_allclose(scaled[0, 1:], scaled[1, 1:], atol=2e-3)  # the hot pixel moves the 99th percentile a little
    with pytest.raises(ValueError, match="shape"):
        normalize_image(np.zeros(5))


@needs_experimental
def test_shared_experimental_images_load():
    for path in sorted(EXPERIMENTAL.glob("*.npy")):
        if path.name.endswith(".coords.npy"):
            continue
        loaded = load_image(path, sampling_A_per_px=0.08)
        assert loaded.image.ndim == 2 and np.isfinite(loaded.image).all()


def test_emd_through_rosettasciio_reads_the_pixel_size(tmp_path):
    """A minimal Berkeley EMD file (HDF5) with calibrated axes in nm."""
    path = tmp_path / "frame.emd"
    with h5py.File(path, "w") as handle:
        handle.attrs["version_major"], handle.attrs["version_minor"] = 0, 2
        group = handle.create_group("data/haadf")
        group.attrs["emd_group_type"] = 1
        group["data"] = FRAME.astype(np.float32)
        for name, label, size in (("dim1", "y", FRAME.shape[0]), ("dim2", "x", FRAME.shape[1])):
            group[name] = np.arange(size) * 0.008
            group[name].attrs["name"], group[name].attrs["units"] = label, "nm"
    loaded = load_image(path, sampling_A_per_px=1.0)
    assert loaded.sampling_A_per_px == pytest.approx(0.08)
    assert loaded.metadata["sampling_source"] == "file" and loaded.metadata["axes"][-1]["units"] == "nm"
    assert sorted(loaded.image.shape) == sorted(FRAME.shape)
