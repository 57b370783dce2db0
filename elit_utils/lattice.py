"""A frame's pixel size, measured from graphene's own lattice in its Fourier transform.

Users sometimes type a wrong pixel size (0.078 for a frame of 0.04 A/px), and a model
then finds atoms at the wrong scale without a word. Graphene carries its own ruler:
:func:`estimate_sampling` reads the pixel size off the lattice, and
:func:`compare_with_lattice` turns a disagreement into a one-line warning.

Why it works
------------
Graphene is a honeycomb of carbon atoms on a hexagonal lattice with
``a = 2.46 A``. Its lowest-order lattice planes, {10}, are
``d1 = a sqrt(3) / 2 = 2.130 A`` apart in three directions 60 degrees apart, so the
power spectrum of any image of it holds six sharp peaks (three directions, each with
its centrosymmetric partner) on a ring of radius ``1 / d1``. In a frame of pixel size
``s`` (A/px) that ring lies at ``s / d1`` cycles per pixel: measure the ring's radius
and ``s = d1 x radius``. The next rings are the {11} planes at ``a / 2 = 1.23 A``
(radius x sqrt(3), turned by 30 degrees) and the {20} planes at ``1.065 A``
(radius x 2); where the probe resolves them they confirm the lattice and pin it down
(a peak twice as far out gives the radius twice as precisely).

Noise, amorphous carbon and smooth backgrounds give isotropic rings or lone peaks,
never six peaks 60 degrees apart whose third direction closes the triangle of the
first two (``g3 = g2 - g1``) and whose harmonics sit where the lattice puts them.
Each peak is scored by how far it stands above the noise of the spectrum at its
radius, allowing for the area searched for it; a ring counts when the sum of the
scores (``EVIDENCE_THRESHOLD``) is far beyond what pure noise reaches (tests).

What breaks it
--------------
* Few lattice periods in the frame (small frames, very fine pixels): the {10}
  peaks crowd the centre of the spectrum. With at least 6 periods across the shorter
  side (``side x s > 13 A``: 256 px at 0.05 A/px, 512 px at 0.025 A/px) the estimate
  is within 5 %; with 3 to 6 it is often refused, and under 3 always.
* Coarse pixels: the {10} ring must stay below Nyquist (0.5 cycles/px, s < 1 A/px);
  above about 0.6 A/px the higher orders alias back into the spectrum and drift can
  make them mislead it.
* Drift and scan distortion: the lattice is stretched differently along each
  direction, the six radii differ (``radius_spread``) and no single pixel size is
  right; the mean of the six radii is right to first order.
* No crystalline graphene (thick contamination, holes, noise): BadImageError asks for
  the pixel size. Any hexagonal lattice of about the same size (hBN, a = 2.50 A) reads
  as graphene; other 2D materials would give a wrong scale.

Example
-------
>>> from elit_utils import simulate
>>> frame = simulate.dataset("source", n=1, seed=0, image_size_px=128, cache=False).images[0]
>>> estimate = estimate_sampling(frame)  # the source domain is 0.1 A/px
>>> round(estimate.sampling_A_per_px, 2), estimate.n_peaks >= 6
(0.1, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage

from .errors import BadImageError

#: Graphene's lattice constant, in A (the C-C bond is a / sqrt(3) = 1.42 A).
GRAPHENE_LATTICE_A = 2.46
#: Spacing of the first-order {10} lattice planes, a sqrt(3) / 2 = 2.130 A.
FIRST_ORDER_SPACING_A = GRAPHENE_LATTICE_A * np.sqrt(3.0) / 2.0
#: Fewest lattice-plane periods across the frame's shorter side for a measurement.
MIN_PERIODS = 3.0
#: Evidence (see _Lattice) a six-fold ring needs to count as a lattice; pure noise stayed below 28 in 1000 frames.
EVIDENCE_THRESHOLD = 35.0
#: Local maxima of the spectrum at least this many times the background are tried as first-order peaks.
CANDIDATE_RATIO = 6.0
#: A higher-order peak at its predicted place confirms the lattice and joins the fit at this ratio.
CONFIRMATION_RATIO = 8.0
#: Every first-order peak of a lattice must stand this many times above the background.
PEAK_RATIO = 4.0
#: Most evidence one peak can add (see _surprise).
SURPRISE_CAP = 15.0
#: A finer ring (whose {11} or {20} ring the found one is) needs its three peaks at the predicted places,
#: and its weakest at least PEAK_RATIO and this share of the found ring's weakest.
FINER_FRACTION = 0.2
#: Faint peaks (this ratio) where a finer ring's would be make an unconfirmed ring ambiguous...
AMBIGUOUS_RATIO = 3.0
#: ... and so does a finer ring spanning fewer periods than this across the frame, where {10} peaks read weak.
FEW_PERIODS = 6.0
AMBIGUOUS_MESSAGE = "the lattice in this frame is too faint to tell its 2.13 A and 1.23 A rings apart; pass the pixel size explicitly (--sampling)."
#: Largest relative distortion (drift, scan) allowed between two first-order peaks 60 degrees apart.
DISTORTION = 0.12
#: Half-width, in frame bins, of the bands along the two axes through DC flattened against scan-line noise.
AXIS_BAND_BINS = 4.0
#: Quantile of the power on a ring that estimates its background (see _radial_background).
BACKGROUND_QUANTILE = 0.2
#: Frames larger than this (px) are cropped to their centre: at 0.02 A/px or more still 20 A and more, in 0.4 s and 0.2 GB.
MAX_SIDE_PX = 1024
#: Miller indices (h, k) of the peaks looked for, one of each centrosymmetric pair: {10}, {11}, {20}.
ORDERS = {1: ((1, 0), (0, 1), (-1, 1)), 2: ((1, 1), (-1, 2), (2, -1)), 3: ((2, 0), (0, 2), (-2, 2))}


@dataclass(frozen=True)
class LatticeEstimate:
    """Graphene's lattice as seen in one frame, and the pixel size it implies.

    Attributes
    ----------
    sampling_A_per_px: pixel size from the mean radius of the six first-order peaks.
    peak_strength: power of the weakest first-order peak over the mean power of the
        spectrum's background at that radius (unitless: noise reads about 1, a clean
        frame hundreds, a noisy real frame 5-20; a lattice needs at least 4).
    n_peaks: lattice peaks found and used, centrosymmetric partners counted: 6 from the
        first ring, up to 18 with the {11} and {20} rings.
    rotation_deg: direction of the first-order peaks, counter-clockwise from the image's
        column axis, in [0, 60).
    radius_spread: (largest - smallest) / mean of the six first-order radii; 0 for a
        perfect lattice, about twice the strain that drift or scan distortion cause.
    second_order: whether the {11} ring (1.23 A) confirmed the lattice.

    >>> LatticeEstimate(0.08, 50.0, 12, 13.0, 0.01, True).sampling_A_per_px
    0.08
    """

    sampling_A_per_px: float
    peak_strength: float
    n_peaks: int
    rotation_deg: float
    radius_spread: float
    second_order: bool


@dataclass(frozen=True)
class _Spectrum:
    """Power over its radial background (``ratio``) and power minus it (``excess``), on a zero-padded grid, DC at ``centre``."""

    ratio: np.ndarray
    excess: np.ndarray
    centre: int
    shorter_side_px: int
    longer_side_px: int

    @property
    def bin(self) -> float:
        """One frequency bin of the frame (its shorter side), in padded bins."""
        return self.ratio.shape[0] / self.shorter_side_px

    def cells(self, radius: float) -> float:
        """Independent frequency bins (at least 1) in a disc of ``radius`` padded bins: bins are longer across the shorter side."""
        return max(1.0, np.pi * radius**2 * self.shorter_side_px * self.longer_side_px / self.ratio.shape[0] ** 2)


def _as_frame(image: np.ndarray) -> np.ndarray:
    """The image as a float64 2D array of at most MAX_SIDE_PX per side, or BadImageError."""
    frame = np.asarray(image, dtype=np.float64)
    if frame.ndim != 2 or min(frame.shape) < 16:
        raise BadImageError(f"a {frame.shape} array is not a 2D frame of at least 16 x 16 px; pass a single frame.")
    if not np.isfinite(frame).all():
        raise BadImageError("the frame holds NaN or infinite values; clean it or pass the pixel size explicitly (--sampling).")
    top, left = ((n - min(n, MAX_SIDE_PX)) // 2 for n in frame.shape)
    return frame[top : top + MAX_SIDE_PX, left : left + MAX_SIDE_PX]


def _detrended(frame: np.ndarray) -> np.ndarray:
    """The frame minus its least-squares quadratic surface (a smooth background leaks into low frequencies)."""
    rows, cols = (np.linspace(-1, 1, n) for n in frame.shape)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    design = np.stack([np.ones_like(r), r, c, r * r, r * c, c * c], axis=-1).reshape(-1, 6)
    coefficients = np.linalg.lstsq(design[::7], frame.reshape(-1)[::7], rcond=None)[0]
    return frame - (design @ coefficients).reshape(frame.shape)


def _padded_power(frame: np.ndarray) -> tuple[np.ndarray, int]:
    """Power spectrum of the Hann-windowed frame, zero-padded to a square, DC at the centre; and the padding factor."""
    window = np.outer(np.hanning(frame.shape[0] + 2)[1:-1], np.hanning(frame.shape[1] + 2)[1:-1])
    detrended = _detrended(frame)
    windowed = (detrended - np.sum(window * detrended) / window.sum()) * window
    pad = 4 if max(frame.shape) <= 512 else 2
    size = scipy.fft.next_fast_len(pad * max(frame.shape))
    spectrum = scipy.fft.fft2(windowed.astype(np.float32), s=(size, size), workers=-1)
    return np.fft.fftshift(np.abs(spectrum) ** 2), size // max(frame.shape)


def _radial_background(power: np.ndarray, step: int) -> np.ndarray:
    """Mean power of the spectrum's diffuse part on rings one frame-bin wide, interpolated to every pixel.

    Estimated from the ring's 20th percentile: noise power is exponentially distributed
    (mean = 20th percentile / 0.223), and six lattice peaks can cover half of a small ring
    without moving a low percentile much. Dividing by it makes noise read about 1.
    """
    offsets = np.arange(power.shape[0], dtype=np.float32) - power.shape[0] // 2
    radius = np.hypot(offsets[:, None], offsets[None, :]) / step  # in frame bins
    sampled = power[::step, ::step].ravel()  # about one sample per frame bin
    rings = np.rint(radius[::step, ::step].ravel()).astype(np.int32)
    order = np.lexsort((sampled, rings))
    counts = np.bincount(rings)
    low = np.cumsum(counts) - counts + (counts * BACKGROUND_QUANTILE).astype(int)
    mean = np.maximum(sampled[order][low], 1e-30 + sampled.max() * 1e-12) / -np.log(1 - BACKGROUND_QUANTILE)
    mean = np.exp(ndimage.median_filter(np.log(mean), size=3, mode="nearest"))
    return np.interp(radius, np.arange(len(mean)), mean)


def _flattened_axes(ratio: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``ratio`` with the lines near the two axes through DC divided by their own running level (where above 1).

    Scan-line noise (offsets or jitter from one line to the next) puts a bright streak of
    power along an axis; divided by the ring background alone, every bin on it would read
    as a strong peak. A lattice peak on an axis still stands above the streak's level.
    """
    size = ratio.shape[0]
    centre = size // 2
    for axis in (0, 1):
        across, along = size / shape[axis], size / shape[1 - axis]  # frame bins in padded bins
        width = int(np.ceil(AXIS_BAND_BINS * across))
        band = ratio[centre - width : centre + width + 1] if axis == 0 else ratio[:, centre - width : centre + width + 1].T
        step = max(1, int(along))  # one frame bin: the median runs over 17 of them
        level = ndimage.median_filter(band[:, ::step], size=(1, 17), mode="nearest") / np.log(2.0)  # median -> mean
        band /= np.maximum(np.repeat(level, step, axis=1)[:, : band.shape[1]], 1.0)
    return ratio


def _spectrum(frame: np.ndarray) -> _Spectrum:
    """The frame's normalised power spectrum (see _Spectrum)."""
    power, pad = _padded_power(frame)
    background = _radial_background(power, pad)
    ratio = _flattened_axes(power / background, frame.shape)
    return _Spectrum(ratio, (ratio - 1) * background, power.shape[0] // 2, min(frame.shape), max(frame.shape))


@dataclass(frozen=True)
class _Lattice:
    """A reciprocal lattice found in a spectrum: basis (rows b1, b2, in padded bins), its peaks and the evidence for it.

    ``evidence`` sums, over the peaks, how far each stands above what noise reaches in
    the area searched for it (ratio minus log of the number of frequency bins searched:
    for exponentially distributed noise power that is minus the log of its p-value).
    """

    basis: np.ndarray
    miller: np.ndarray
    positions: np.ndarray
    ratios: np.ndarray
    evidence: float

    @property
    def first_radii(self) -> np.ndarray:
        """Radii of the three first-order peaks (1, 0), (0, 1), (-1, 1) of the fitted basis, in padded bins."""
        return np.linalg.norm(np.array(ORDERS[1]) @ self.basis, axis=1)

    @property
    def first(self) -> np.ndarray:
        """Which peaks are first-order ones."""
        return np.array([tuple(hk) in ORDERS[1] for hk in self.miller.tolist()])

    @property
    def strength(self) -> float:
        """Ratio of the weakest first-order peak."""
        return float(self.ratios[self.first].min())

    @property
    def confirmed(self) -> bool:
        """Whether a higher-order peak backs the first ring."""
        return not self.first.all()


def _rotated(vector: np.ndarray, degrees: float) -> np.ndarray:
    """``vector`` (row, col) turned by ``degrees`` on screen (the same sense for all calls)."""
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ vector


def _find_peak(spectrum: _Spectrum, predicted: np.ndarray, tolerance: float) -> tuple[np.ndarray, float] | None:
    """The highest ratio within ``tolerance`` of ``predicted`` (offsets from DC, padded bins), refined to sub-bin.

    None when it is no local maximum (only the flank of a peak outside the disc) or off the grid.
    """
    ratio, n = spectrum.ratio, spectrum.ratio.shape[0]
    row, col = predicted + spectrum.centre
    reach, i0, j0 = int(np.ceil(tolerance)), int(np.rint(row)), int(np.rint(col))
    r0, r1 = max(i0 - reach, 1), min(i0 + reach + 1, n - 1)
    c0, c1 = max(j0 - reach, 1), min(j0 + reach + 1, n - 1)
    if r0 >= r1 or c0 >= c1:
        return None
    rows, cols = np.mgrid[r0:r1, c0:c1]
    inside = (rows - row) ** 2 + (cols - col) ** 2 <= tolerance**2
    if not inside.any():
        return None
    best = np.argmax(np.where(inside, ratio[r0:r1, c0:c1], -np.inf))
    i, j = rows.flat[best], cols.flat[best]
    if ratio[i, j] < ratio[i - 1 : i + 2, j - 1 : j + 2].max():  # the flank of a peak outside the disc
        return None
    value = float(ratio[i, j])
    # the position from the peak's own power above the background, whose slope (steep near DC) would pull it
    excess = spectrum.excess
    i, j = _uphill(excess, i, j, int(np.ceil(spectrum.bin)))
    return np.array([i + _vertex(excess[i - 1 : i + 2, j]), j + _vertex(excess[i, j - 1 : j + 2])]) - spectrum.centre, value


def _uphill(values: np.ndarray, i: int, j: int, steps: int) -> tuple[int, int]:
    """The local maximum of ``values`` reached from (i, j) by at most ``steps`` moves to the highest neighbour."""
    for _ in range(steps):
        if not (0 < i < values.shape[0] - 1 and 0 < j < values.shape[1] - 1):
            break
        di, dj = np.unravel_index(np.argmax(values[i - 1 : i + 2, j - 1 : j + 2]), (3, 3))
        if (di, dj) == (1, 1):
            break
        i, j = i + di - 1, j + dj - 1
    return int(i), int(j)


def _vertex(three: np.ndarray) -> float:
    """Sub-bin offset of a peak from three samples around it (parabola through their logarithms)."""
    top = float(three.max())
    if top <= 0:
        return 0.0
    low, mid, high = np.log(np.maximum(three, 1e-6 * top))
    curvature = low - 2 * mid + high
    return float(np.clip(0.5 * (low - high) / curvature, -0.5, 0.5)) if curvature < 0 else 0.0


def _fit_basis(miller: np.ndarray, positions: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """Least-squares reciprocal basis (2 x 2) from peaks, weighted by their strength (capped: systematics dominate)."""
    weights = np.sqrt(np.minimum(ratios, 100.0))[:, None]
    return np.linalg.lstsq(miller * weights, positions * weights, rcond=None)[0]


def _surprise(spectrum: _Spectrum, ratio: float, tolerance: float) -> float:
    """How far a peak's ratio stands above the highest noise in a disc of radius ``tolerance``: minus the log of its
    p-value, capped at SURPRISE_CAP (one huge peak, such as mains interference, does not make a lattice)."""
    return min(ratio - np.log(spectrum.cells(tolerance)), SURPRISE_CAP)


def _measure(spectrum: _Spectrum, basis: np.ndarray, tolerance: float, closure: bool = True, searched: float = 0.0) -> _Lattice | None:
    """The peaks of the lattice ``basis`` predicts, or None when a first-order one is missing.

    The (1, 0) peak is looked for near ``basis[0]``, the (0, 1) peak within ``tolerance``
    of ``basis[1]`` (drift and scan distortion turn and stretch it), and with ``closure``
    the (-1, 1) peak tightly at their difference (any linear distortion keeps that
    closure, noise does not), else where ``basis`` puts it; then the {11} and {20} peaks
    where the fitted lattice puts them. ``searched``: the radius of a disc as large as the
    area the (1, 0) peak was picked from, when larger than the tight one.
    """
    one = _find_peak(spectrum, basis[0], _tight(spectrum, basis[0]))
    two = _find_peak(spectrum, basis[1], tolerance)
    if one is None or two is None:
        return None
    predicted = two[0] - one[0] if closure else basis[1] - basis[0]
    three = _find_peak(spectrum, predicted, _tight(spectrum, predicted))
    if three is None:
        return None
    evidence = _surprise(spectrum, one[1], max(searched, _tight(spectrum, basis[0])))
    evidence += _surprise(spectrum, two[1], tolerance) + _surprise(spectrum, three[1], _tight(spectrum, predicted))
    miller, peaks = [*ORDERS[1]], [one, two, three]
    basis = _fit_basis(np.array(miller), np.array([p[0] for p in peaks]), np.array([p[1] for p in peaks]))
    for hk, peak in _higher_orders(spectrum, basis):
        evidence += max(0.0, _surprise(spectrum, peak[1], _tight(spectrum, peak[0])))  # absent orders are no evidence against
        if peak[1] >= CONFIRMATION_RATIO:
            miller.append(hk)
            peaks.append(peak)
    miller, positions, ratios = np.array(miller), np.array([p[0] for p in peaks]), np.array([p[1] for p in peaks])
    return _Lattice(_fit_basis(miller, positions, ratios), miller, positions, ratios, float(evidence))


def _higher_orders(spectrum: _Spectrum, basis: np.ndarray) -> list[tuple[tuple[int, int], tuple[np.ndarray, float]]]:
    """The {11} and {20} peaks found where ``basis`` puts them (those below 0.48 cycles/px, short of aliasing)."""
    found = []
    for hk in ORDERS[2] + ORDERS[3]:
        predicted = np.array(hk) @ basis
        if np.linalg.norm(predicted) < 0.48 * spectrum.ratio.shape[0]:
            peak = _find_peak(spectrum, predicted, _tight(spectrum, predicted))
            if peak is not None:
                found.append((hk, peak))
    return found


def _tight(spectrum: _Spectrum, predicted: np.ndarray) -> float:
    """Search radius around a peak position predicted from other peaks: one frame bin plus 2 %."""
    return spectrum.bin + 0.02 * float(np.linalg.norm(predicted))


def _searchable(spectrum: _Spectrum) -> tuple[float, float]:
    """Smallest and largest first-order radius looked for, in padded bins (MIN_PERIODS; 0.45 cycles/px)."""
    return MIN_PERIODS * spectrum.bin, 0.45 * spectrum.ratio.shape[0]


def _candidates(spectrum: _Spectrum, count: int = 40) -> np.ndarray:
    """The ``count`` strongest local maxima of the upper half-plane within the searchable radii, as offsets from DC."""
    ratio, centre = spectrum.ratio, spectrum.centre
    size = int(np.ceil(spectrum.bin)) | 1
    low, high = _searchable(spectrum)
    top, left = max(0, centre - int(high) - size), max(0, centre - int(high) - size)
    upper_half = ratio[top : centre + 1, left : 2 * centre - left + 1]
    maxima = (upper_half == ndimage.maximum_filter(upper_half, size=size)) & (upper_half >= CANDIDATE_RATIO)
    offsets = np.argwhere(maxima) + np.array([top - centre, left - centre])
    radius = np.linalg.norm(offsets, axis=1)
    upper = (offsets[:, 0] < 0) | ((offsets[:, 0] == 0) & (offsets[:, 1] > 0))
    offsets = offsets[upper & (radius >= low) & (radius <= high)]
    strongest = np.argsort(ratio[offsets[:, 0] + centre, offsets[:, 1] + centre])[::-1][:count]
    return offsets[strongest].astype(float)


def _lattices(spectrum: _Spectrum) -> list[_Lattice]:
    """Every six-fold ring of peaks with enough evidence (EVIDENCE_THRESHOLD), one hypothesis per candidate peak."""
    low, high = _searchable(spectrum)
    searched = np.sqrt((high**2 - low**2) / 2)  # a disc as large as the half-annulus searched for candidates
    found = []
    for candidate in _candidates(spectrum):
        basis = np.array([candidate, _rotated(candidate, 60.0)])
        lattice = _measure(spectrum, basis, DISTORTION * np.linalg.norm(candidate) + spectrum.bin, searched=searched)
        if lattice is not None and _counts(lattice, low):
            found.append(lattice)
    return found


def _counts(lattice: _Lattice, smallest_radius: float) -> bool:
    """Whether a ring is graphene's lattice: enough evidence, all six first-order peaks distinct, not too small."""
    return lattice.evidence >= EVIDENCE_THRESHOLD and lattice.strength >= PEAK_RATIO and lattice.first_radii.min() >= smallest_radius


def _first_order(spectrum: _Spectrum, lattice: _Lattice) -> _Lattice:
    """``lattice``, or the finer lattice whose {11} or {20} ring it is, when that one's first ring is there too.

    In a frame only a few lattice periods wide the {10} peaks crowd the centre of the
    spectrum and read weaker than the {11} ones. The finer ring is accepted at a low
    ratio where the coarse one predicts it, but not far weaker than the coarse ring:
    {11} peaks are at most about 4 times the {10} ones (structure factor 2 vs 1, and the
    probe passes less at higher frequency), {20} peaks are weaker than {10}. When the
    coarse ring has no higher order to back it, and faint peaks sit where a finer ring's
    would or that finer ring would span fewer than FEW_PERIODS periods (where {10} peaks
    can hide), the two readings (differing by sqrt(3) or 2) cannot be told apart: BadImageError.
    """
    b1, b2 = lattice.basis
    needed = max(PEAK_RATIO, FINER_FRACTION * lattice.strength)
    for finer in (np.array([2 * b1 - b2, b1 + b2]) / 3, lattice.basis / 2):
        candidate = _measure(spectrum, finer, _tight(spectrum, finer[1]), closure=False)
        if candidate is None or candidate.first_radii.min() < _searchable(spectrum)[0]:
            continue
        if candidate.strength >= needed:
            return candidate
        if candidate.strength >= AMBIGUOUS_RATIO and not lattice.confirmed:
            raise BadImageError(AMBIGUOUS_MESSAGE)
    if not lattice.confirmed and lattice.first_radii.mean() / np.sqrt(3.0) < FEW_PERIODS * spectrum.bin:
        raise BadImageError(AMBIGUOUS_MESSAGE)
    return lattice


def _refined(spectrum: _Spectrum, lattice: _Lattice) -> _Lattice:
    """``lattice`` fitted again to all its peaks found where its basis puts them, twice, dropping outliers.

    One first-order peak picked off its place (a hole, a cluster of dopants nearby) skews
    the basis it was found with, so that the higher-order peaks fall outside their tight
    search; searching a little wider and discarding the peak the others disagree with
    recovers them.
    """
    basis = lattice.basis
    for _ in range(2):
        miller, peaks = [], []
        for hk in ORDERS[1] + ORDERS[2] + ORDERS[3]:
            predicted = np.array(hk) @ basis
            wide = max(_tight(spectrum, predicted), 0.05 * float(np.linalg.norm(predicted)))
            peak = _find_peak(spectrum, predicted, wide) if np.linalg.norm(predicted) < 0.48 * spectrum.ratio.shape[0] else None
            if peak is not None and (hk in ORDERS[1] or peak[1] >= CONFIRMATION_RATIO):
                miller.append(hk)
                peaks.append(peak)
        if sum(hk in ORDERS[1] for hk in miller) < 3:
            return lattice
        miller, positions, ratios = np.array(miller), np.array([p[0] for p in peaks]), np.array([p[1] for p in peaks])
        keep = _inliers(miller, positions, ratios, spectrum.bin)
        basis = _fit_basis(miller[keep], positions[keep], ratios[keep])
    return _Lattice(basis, miller[keep], positions[keep], ratios[keep], lattice.evidence)


def _inliers(miller: np.ndarray, positions: np.ndarray, ratios: np.ndarray, bin_size: float) -> np.ndarray:
    """Peaks that agree with the lattice fitted to all (residual within 1.5 frame bins or 3 times the median)."""
    keep = np.ones(len(miller), bool)
    if len(miller) > 4:  # with 4 or fewer a bad peak cannot be singled out
        residual = np.linalg.norm(miller @ _fit_basis(miller, positions, ratios) - positions, axis=1)
        keep = residual <= max(1.5 * bin_size, 3 * np.median(residual))
    return keep


def _best(lattices: list[_Lattice]) -> _Lattice:
    """The lattice with most evidence: the true one explains the {10}, {11} and {20} peaks at once, where a
    ring of harmonics explains fewer peaks (a finer ring is then looked for by _first_order)."""
    return max(lattices, key=lambda lattice: lattice.evidence)


def estimate_sampling(image: np.ndarray) -> LatticeEstimate:
    """The pixel size (A/px) of a frame of graphene, from the six first-order peaks of its lattice.

    Steps: crop frames larger than MAX_SIDE_PX (1024 px) to their centre; subtract a
    smooth (quadratic) background, apply a Hann window, zero-pad to
    a square (finer frequency bins, the same in both directions for non-square frames);
    divide the power spectrum by its background on each ring (so that peaks read as
    "times the background") and flatten scan-line streaks along the axes; try the
    strongest local maxima as first-order peaks, each with a partner 60 degrees on
    (within DISTORTION) and a third where the two close the triangle; score the {10},
    {11} and {20} peaks of each such lattice; keep the best-scored one, switch to the
    finer lattice whose harmonic it may be; refine the peaks to sub-bin (on the power
    above the background), fit one reciprocal lattice (a sheared one, if drift shears
    it) to all of them, dropping any that disagree, and average the six first-order radii.

    Raises BadImageError, with a one-line message asking for the pixel size, when no
    lattice stands out (noise, amorphous or blank frame, too few lattice periods) or
    when a faint one cannot be told from its own harmonics.

    >>> from elit_utils import simulate
    >>> frame = simulate.dataset("fine_sampling", n=1, seed=1, image_size_px=256, cache=False).images[0]
    >>> round(estimate_sampling(frame).sampling_A_per_px, 2)  # made at 0.06 A/px
    0.06
    """
    frame = _as_frame(image)
    if np.ptp(frame) == 0:
        raise BadImageError("the frame is constant, so it shows no lattice; pass the pixel size explicitly (--sampling).")
    spectrum = _spectrum(frame)
    lattices = _lattices(spectrum)
    if not lattices:
        shape = "x".join(map(str, np.shape(image)))
        raise BadImageError(f"no graphene lattice (six peaks at 2.13 A) found in this {shape} px frame; pass the pixel size explicitly (--sampling).")
    lattice = _refined(spectrum, _first_order(spectrum, _best(lattices)))
    radii = lattice.first_radii
    if radii.mean() < FEW_PERIODS * spectrum.bin and np.ptp(radii) / radii.mean() > DISTORTION and lattice.strength < CONFIRMATION_RATIO:
        # few periods, weak peaks and radii that disagree more than drift stretches them: clutter (amorphous
        # patches, holes) can lend a spurious ring its evidence; a drifted lattice gives strong peaks
        raise BadImageError(AMBIGUOUS_MESSAGE)
    b1 = lattice.basis[0]
    return LatticeEstimate(
        sampling_A_per_px=float(FIRST_ORDER_SPACING_A * radii.mean() / spectrum.ratio.shape[0]),
        peak_strength=lattice.strength,
        n_peaks=2 * len(lattice.ratios),
        rotation_deg=float(np.degrees(np.arctan2(-b1[0], b1[1])) % 60.0),
        radius_spread=float(np.ptp(radii) / radii.mean()),
        second_order=bool(any(tuple(hk) in ORDERS[2] for hk in lattice.miller.tolist())),
    )


def compare_with_lattice(image: np.ndarray, given_A_per_px: float, tolerance: float = 0.15) -> str | None:
    """A one-line warning when ``given_A_per_px`` disagrees with the frame's own lattice; None otherwise.

    Quiet (None) when the two agree within ``tolerance`` (relative) and when the frame
    shows no lattice at all (clutter, contamination: then there is nothing to compare).

    >>> from elit_utils import simulate
    >>> frame = simulate.dataset("source", n=1, seed=0, image_size_px=128, cache=False).images[0]
    >>> compare_with_lattice(frame, 0.1) is None
    True
    >>> print(compare_with_lattice(frame, 0.2))  # doctest: +ELLIPSIS
    the pixel size given (0.2 A/px) differs by ...% from the 0.1... A/px that graphene's lattice ...
    """
    try:
        estimate = estimate_sampling(image)
    except BadImageError:
        return None
    measured = estimate.sampling_A_per_px
    if abs(given_A_per_px - measured) <= tolerance * measured:
        return None
    return (
        f"the pixel size given ({given_A_per_px:g} A/px) differs by {100 * abs(given_A_per_px / measured - 1):.0f}% from the {measured:.3f} A/px"
        f" that graphene's lattice (2.46 A) shows in this frame; check it, or use --sampling auto (or --sampling {measured:.3f})."
    )
