import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from elit_utils.errors import BadImageError, BadValueError
from elit_utils.io import ImageLoadError, check_sampling, load_image, normalize_image, parse_sampling

from .conftest import EXPERIMENTAL, needs_experimental

FRAME = np.random.default_rng(0).random((128, 160)).astype(np.float64) * 100


def test_npy_round_trip_gives_float32_and_the_given_pixel_size(tmp_path):
    np.save(tmp_path / "a.npy", FRAME)
    loaded = load_image(tmp_path / "a.npy", sampling_A_per_px=0.08)
    assert loaded.image.dtype == np.float32 and loaded.image.shape == (128, 160)
    np.testing.assert_allclose(loaded.image, FRAME, rtol=1e-6)
    assert loaded.sampling_A_per_px == 0.08 and loaded.metadata["sampling_source"] == "argument"


def test_png_greyscale_and_rgb(tmp_path):
    grey = (FRAME / FRAME.max() * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png").image, grey)
    assert load_image(tmp_path / "rgb.png").image.shape == (128, 160)


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
        (FRAME.astype(complex), "complex numbers"),
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
        with pytest.raises(ImageLoadError, match="could not be read|corrupt|not a NumPy .npy file"):
            load_image(tmp_path / name)


def test_npy_of_objects_or_of_text_is_refused_clearly(tmp_path):
    np.save(tmp_path / "p.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageLoadError, match="Python objects"):
        load_image(tmp_path / "p.npy")
    (tmp_path / "t.npy").write_text("1 2 3\n4 5 6\n")
    with pytest.raises(BadImageError, match=r"t\.npy: is not a NumPy \.npy file \(it holds text\)") as error:
        load_image(tmp_path / "t.npy")
    assert "pickle" not in str(error.value).split(": ", 1)[1]


def test_pixel_size_required_and_unit_checks(tmp_path):
    np.save(tmp_path / "a.npy", FRAME)
    with pytest.raises(ImageLoadError, match="no pixel size.*sampling_A_per_px"):
        load_image(tmp_path / "a.npy", require_sampling=True)
    with pytest.raises(BadValueError, match="nm/px"):
        load_image(tmp_path / "a.npy", sampling_A_per_px=0.0008)
    with pytest.raises(BadValueError, match="pm/px"):
        check_sampling(8.0)
    with pytest.raises(BadValueError, match="positive"):
        check_sampling(-0.1)
    with pytest.raises(BadValueError, match="not a number"):
        check_sampling("0.1 A")


def test_image_load_error_is_the_bad_image_error_of_the_family():
    assert ImageLoadError is BadImageError and issubclass(ImageLoadError, ValueError)


@pytest.mark.parametrize(("stored", "expected_A"), [(0.079, 0.079), ("0.079 A", 0.079), ("0.0079 nm", 0.079), (b"7.9 pm/px", 0.079), ("0.079", 0.079)])
def test_hdf5_pixel_size_stored_as_text_with_a_unit(tmp_path, stored, expected_A):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as handle:
        handle["haadf"] = FRAME
        handle["haadf"].attrs["sampling_A_per_px"] = stored
    assert load_image(path).sampling_A_per_px == pytest.approx(expected_A)


def test_hdf5_pixel_size_that_is_no_length_names_the_attribute(tmp_path):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as handle:
        handle["haadf"] = FRAME
        handle["haadf"].attrs["sampling_A_per_px"] = "0.079 furlongs"
    with pytest.raises(BadImageError, match=r"a\.h5: attribute sampling_A_per_px of dataset 'haadf' = '0\.079 furlongs' is not a pixel size") as error:
        load_image(path)
    assert "corrupt" not in str(error.value)
    assert parse_sampling("0.5 angstrom") == 0.5


def test_the_callers_pixel_size_can_override_the_files(tmp_path):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as handle:
        handle["haadf"] = FRAME
        handle["haadf"].attrs["sampling_A_per_px"] = 0.08
    assert load_image(path, sampling_A_per_px=0.1).sampling_A_per_px == pytest.approx(0.08)
    loaded = load_image(path, sampling_A_per_px=0.1, override_file_sampling=True)
    assert loaded.sampling_A_per_px == 0.1 and loaded.metadata["file_sampling_A_per_px"] == pytest.approx(0.08)
    assert loaded.metadata["sampling_source"] == "argument"


@pytest.mark.parametrize(
    ("array", "sampling", "message"),
    [
        (np.zeros((0, 0)), None, r"empty \(shape \(0, 0\)\)"),
        (np.zeros((3, 0, 5)), None, "empty"),
        (FRAME > 50, None, "True/False"),
        (np.random.default_rng(1).random((8, 8)), None, "only 8x8 px"),
        (np.random.default_rng(1).random((2, 2)), None, "only 2x2 px"),
        (np.random.default_rng(1).random((1, 256)), None, "only 1x256 px"),
        (np.random.default_rng(1).random((64, 64)), 0.1, "covers only 6.4 x 6.4 A"),
        (np.random.default_rng(1).random((64, 64, 3)), None, "colour image"),
        (np.array([["a", "b"], ["c", "d"]]), None, "not real numbers"),
    ],
)
def test_unusable_frames_are_refused_with_the_reason(tmp_path, array, sampling, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(BadImageError, match=message) as error:
        load_image(tmp_path / "bad.npy", sampling_A_per_px=sampling)
    assert str(error.value).startswith(str(tmp_path / "bad.npy")) and "\n" not in str(error.value)


def test_rgba_png_of_a_grey_image_is_read_as_grey(tmp_path):
    grey = (FRAME / FRAME.max() * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey, grey, grey, np.full_like(grey, 255)], -1)).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png").image, grey)


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
