"""Atoms from a probability map: threshold, connected components, sub-pixel centroids.

Example
-------
>>> probability = np.zeros((20, 20)); probability[4:7, 4:7] = 0.9; probability[12:15, 10:13] = 0.8
>>> find_atoms(probability).round(1).tolist()
[[5.0, 5.0], [13.0, 11.0]]
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def find_atoms(probability: np.ndarray, threshold: float = 0.5, min_area_px: int = 1) -> np.ndarray:
    """Centres (row, col in px) of the connected regions where ``probability > threshold``.

    Each centre is the probability-weighted centroid of its region, so it is
    sub-pixel. Regions smaller than ``min_area_px`` pixels are dropped (speckle).

    >>> find_atoms(np.zeros((8, 8))).shape
    (0, 2)
    """
    probability = np.asarray(probability, float)
    if probability.ndim != 2:
        raise ValueError(f"find_atoms expects one 2D probability map, got shape {probability.shape}")
    if not np.isfinite(probability).all():
        raise ValueError("the probability map contains NaN or inf")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    regions, count = ndimage.label(probability > threshold)
    if count == 0:
        return np.empty((0, 2))
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(probability), regions, index)
    centres = np.array(ndimage.center_of_mass(probability, regions, index), float).reshape(-1, 2)
    return centres[areas >= min_area_px]
