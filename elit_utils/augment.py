"""Training-time augmentation of image/mask batches, vectorised in torch.

What atomai's ``datatransform`` does (noise, contrast, zoom, blur), done on the
whole batch at once on the training device instead of image by image in NumPy,
so augmentation never becomes the bottleneck of a training step.

Every random draw comes from the ``torch.Generator`` passed in, so a member's
augmentation stream is fixed by its seed.

Example
-------
>>> import torch
>>> images, masks = torch.rand(4, 1, 32, 32), (torch.rand(4, 1, 32, 32) > 0.9).float()
>>> out_images, out_masks = augment_batch(images, masks, Augmentation(), torch.Generator().manual_seed(0))
>>> out_images.shape, float(out_images.min()) >= 0.0, set(out_masks.unique().tolist()) <= {0.0, 1.0}
(torch.Size([4, 1, 32, 32]), True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random changes applied to each training image.

    Attributes
    ----------
    zoom: (min, max) magnification; above 1 atoms grow, below 1 they shrink.
    blur_sigma_px: (min, max) Gaussian blur.
    gamma: (min, max) contrast exponent.
    poisson_counts: (min, max) counts at the brightest pixel when re-noised with Poisson noise.
    gaussian_noise: (min, max) rms of added Gaussian noise (image scaled to [0, 1]).
    background_slope: max amplitude of a random linear background across the frame.
    flips: random flips and 90-degree rotations.
    """

    zoom: tuple[float, float] = (0.8, 1.3)
    blur_sigma_px: tuple[float, float] = (0.0, 1.5)
    gamma: tuple[float, float] = (0.7, 1.4)
    poisson_counts: tuple[float, float] = (15.0, 300.0)
    gaussian_noise: tuple[float, float] = (0.0, 0.08)
    background_slope: float = 0.3
    flips: bool = True

    def as_dict(self) -> dict:
        """Plain dictionary for JSON records."""
        return asdict(self)


def _uniform(low: float, high: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator).to(device)


def _zoom_and_flip(images: torch.Tensor, masks: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n, device = images.shape[0], images.device
    scale = 1.0 / _uniform(*aug.zoom, n, generator, device)
    shift = (torch.rand(n, 2, generator=generator).to(device) * 2 - 1) * (1 - scale.clamp(max=1))[:, None]
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    if aug.flips:
        flip = torch.where(torch.rand(n, 2, generator=generator).to(device) < 0.5, -1.0, 1.0)
        theta[:, 0, 0] *= flip[:, 0]
        theta[:, 1, 1] *= flip[:, 1]
        swap = (torch.rand(n, generator=generator) < 0.5).to(device)  # transpose = 90-degree rotation with a flip
        theta[swap, :, :2] = theta[swap][:, :, :2].flip(-1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    masks = (F.grid_sample(masks, grid, mode="bilinear", padding_mode="reflection", align_corners=False) > 0.5).to(masks.dtype)
    return images, masks


def _blur(images: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    n, device = images.shape[0], images.device
    sigma = _uniform(*aug.blur_sigma_px, n, generator, device).clamp(min=1e-3)
    radius = max(1, round(3 * aug.blur_sigma_px[1]))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=images.dtype)
    kernels = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    stacked = images.reshape(1, n, *images.shape[-2:])
    stacked = F.pad(stacked, (radius, radius, radius, radius), mode="reflect")
    stacked = F.conv2d(stacked, kernels[:, None, :, None], groups=n)
    stacked = F.conv2d(stacked, kernels[:, None, None, :], groups=n)
    return stacked.reshape(images.shape)


def rescale_unit(images: torch.Tensor, low_quantile: float = 0.01, high_quantile: float = 0.99) -> torch.Tensor:
    """Per-image robust scaling to [0, 1] (the same rule as ``io.normalize_image``)."""
    flat = images.reshape(images.shape[0], -1)
    low = torch.quantile(flat, low_quantile, dim=1)[:, None, None, None]
    high = torch.quantile(flat, high_quantile, dim=1)[:, None, None, None]
    return ((images - low) / (high - low).clamp(min=1e-6)).clamp(0, 1)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment (B, 1, H, W) images in [0, 1] and their (B, 1, H, W) masks the same way geometrically.

    Order: zoom/flip (images and masks), blur, gamma, background, Poisson and
    Gaussian noise, then robust rescaling to [0, 1].
    """
    n, device = images.shape[0], images.device
    images, masks = _zoom_and_flip(images, masks, aug, generator)
    if aug.blur_sigma_px[1] > 0:
        images = _blur(images, aug, generator)
    images = images.clamp(min=0) ** _uniform(*aug.gamma, n, generator, device)[:, None, None, None]
    if aug.background_slope > 0:
        h, w = images.shape[-2:]
        ramp_rows = torch.linspace(-0.5, 0.5, h, device=device)[:, None]
        ramp_cols = torch.linspace(-0.5, 0.5, w, device=device)[None, :]
        slopes = (torch.rand(n, 2, generator=generator).to(device) * 2 - 1) * aug.background_slope
        images = images + slopes[:, 0, None, None, None] * ramp_rows + slopes[:, 1, None, None, None] * ramp_cols
        images = images - images.amin(dim=(2, 3), keepdim=True)
    counts = torch.exp(_uniform(*torch.log(torch.tensor(aug.poisson_counts)).tolist(), n, generator, device))[:, None, None, None]
    peak = images.amax(dim=(2, 3), keepdim=True).clamp(min=1e-6)
    images = torch.poisson(images / peak * counts, generator=generator if device.type == "cpu" else None) / counts
    images = images + torch.randn(images.shape, generator=generator).to(device) * _uniform(*aug.gaussian_noise, n, generator, device)[:, None, None, None]
    return rescale_unit(images), masks
