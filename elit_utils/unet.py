"""N atomai U-Nets packed into one network with grouped convolutions.

Why our own module: the ELIT ensemble is N copies of atomai's ``Unet`` that differ
only in their random seed. Training or running them one after another repeats
every small convolution N times; packing them side by side as the groups of
grouped convolutions runs all members in one pass (one kernel launch per layer,
better use of cores and GPUs) while each member stays mathematically separate:
no weight, activation or batch-norm statistic is shared.

The layer names and per-member tensor shapes are exactly atomai's, so member
``i`` of a :class:`PackedUnet` is an atomai ``Unet`` state dict
(:meth:`PackedUnet.member_state_dict`) and atomai-initialised members can be
packed (:meth:`PackedUnet.from_members`). A test checks that the packed forward
pass equals atomai's, member by member.

Example
-------
>>> import torch
>>> net = PackedUnet(n_members=3, nb_filters=4)
>>> net(torch.rand(2, 3, 32, 32)).shape  # (batch, members, classes, H, W)
torch.Size([2, 3, 1, 32, 32])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UnetArchitecture:
    """atomai ``Unet`` settings (the paper's: one class, batch norm, bilinear upsampling).

    >>> UnetArchitecture(nb_filters=16).layers
    (1, 2, 2, 3)
    """

    nb_classes: int = 1
    nb_filters: int = 16
    layers: tuple[int, int, int, int] = (1, 2, 2, 3)
    batch_norm: bool = True
    upsampling_mode: str = "bilinear"

    def as_dict(self) -> dict:
        """Plain dictionary for JSON records."""
        return {**asdict(self), "layers": list(self.layers)}

    def atomai_unet(self, seed: int) -> nn.Module:
        """A freshly initialised atomai ``Unet`` with this architecture, seeded."""
        from atomai.nets import Unet

        torch.manual_seed(seed)
        return Unet(
            nb_classes=self.nb_classes,
            nb_filters=self.nb_filters,
            batch_norm=self.batch_norm,
            upsampling_mode=self.upsampling_mode,
            layers=list(self.layers),
        )


class _ConvBlock(nn.Module):
    """atomai's ConvBlock (conv 3x3 -> leaky ReLU -> batch norm) for N members at once."""

    def __init__(self, n_members: int, n_layers: int, channels_in: int, channels_out: int, batch_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(n_layers):
            source = channels_in if index == 0 else channels_out
            layers.append(nn.Conv2d(n_members * source, n_members * channels_out, 3, padding=1, groups=n_members))
            layers.append(nn.LeakyReLU(0.01))
            if batch_norm:
                layers.append(nn.BatchNorm2d(n_members * channels_out))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _UpsampleBlock(nn.Module):
    """atomai's UpsampleBlock (x2 interpolation, then a 1x1 convolution) for N members.

    Both steps are linear and act on different axes (space vs channels), and the
    interpolation weights sum to one (so the bias passes unchanged): they commute.
    We convolve first, at a quarter of the pixels and before halving the channels
    are interpolated, which is the same result for less work.
    """

    def __init__(self, n_members: int, channels_in: int, channels_out: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(n_members * channels_in, n_members * channels_out, 1, groups=n_members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=2, mode=self.mode)


class PackedUnet(nn.Module):
    """``n_members`` atomai U-Nets side by side; input (B, N, H, W), output (B, N, classes, H, W).

    Member ``i`` sees input channel ``i`` only, so members can train on different batches.
    H and W must be multiples of 8 (three 2x poolings).
    """

    def __init__(self, n_members: int, architecture: UnetArchitecture | None = None, **kwargs: object) -> None:
        super().__init__()
        arch = architecture or UnetArchitecture(**kwargs)
        self.n_members = n_members
        self.architecture = arch
        n, f, (l1, l2, l3, l4), bn = n_members, arch.nb_filters, arch.layers, arch.batch_norm
        self.c1 = _ConvBlock(n, l1, 1, f, bn)
        self.c2 = _ConvBlock(n, l2, f, 2 * f, bn)
        self.c3 = _ConvBlock(n, l3, 2 * f, 4 * f, bn)
        self.bn = _ConvBlock(n, l4, 4 * f, 8 * f, bn)
        self.upsample_block1 = _UpsampleBlock(n, 8 * f, 4 * f, arch.upsampling_mode)
        self.c4 = _ConvBlock(n, l3, 8 * f, 4 * f, bn)
        self.upsample_block2 = _UpsampleBlock(n, 4 * f, 2 * f, arch.upsampling_mode)
        self.c5 = _ConvBlock(n, l2, 4 * f, 2 * f, bn)
        self.upsample_block3 = _UpsampleBlock(n, 2 * f, f, arch.upsampling_mode)
        self.c6 = _ConvBlock(n, l1, 2 * f, f, bn)
        self.px = nn.Conv2d(n * f, n * arch.nb_classes, 1, groups=n)

    def _join(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """Concatenate skip and upsampled features member by member (atomai's order: skip first).

        Written into a channels-last tensor through a (B, H, W, members, channels) view rather than
        concatenated as 5-D tensors: the same values, but the result stays channels-last, so the
        next convolution does not first convert its input (about a fifth of the network's CPU time).
        """
        b, _, h, w = skip.shape
        n = self.n_members
        c_skip, c_up = skip.shape[1] // n, up.shape[1] // n
        dtype = torch.promote_types(skip.dtype, up.dtype)
        joined = torch.empty(b, n * (c_skip + c_up), h, w, dtype=dtype, device=skip.device, memory_format=torch.channels_last)
        per_member = joined.permute(0, 2, 3, 1).view(b, h, w, n, c_skip + c_up)
        per_member[..., :c_skip] = skip.permute(0, 2, 3, 1).reshape(b, h, w, n, c_skip)
        per_member[..., c_skip:] = up.permute(0, 2, 3, 1).reshape(b, h, w, n, c_up)
        return joined

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.n_members:
            raise ValueError(f"PackedUnet expects input (batch, {self.n_members} members, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"image sides must be multiples of 8, got {tuple(x.shape[-2:])}")

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The encoder's outputs at full, 1/2 and 1/4 resolution, and the bottleneck at 1/8."""
        self._check_input(x)
        c1 = self.c1(x)
        c2 = self.c2(F.max_pool2d(c1, 2))
        c3 = self.c3(F.max_pool2d(c2, 2))
        return c1, c2, c3, self.bn(F.max_pool2d(c3, 2))

    def bottleneck_features(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's bottleneck activations averaged over the image, (batch, members, channels).

        What a member's encoder "sees" in a frame, summarised: the input to out-of-distribution
        scores in feature space (:class:`elit_utils.ood.ShiftDetector`).

        >>> PackedUnet(2, nb_filters=4).bottleneck_features(torch.zeros(1, 2, 16, 16)).shape
        torch.Size([1, 2, 32])
        """
        bottom = self._encode(x)[-1]
        return bottom.mean(dim=(-2, -1)).reshape(x.shape[0], self.n_members, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3, bottom = self._encode(x)
        u3 = self.c4(self._join(c3, self.upsample_block1(bottom)))
        u2 = self.c5(self._join(c2, self.upsample_block2(u3)))
        u1 = self.c6(self._join(c1, self.upsample_block3(u2)))
        logits = self.px(u1)
        return logits.reshape(x.shape[0], self.n_members, self.architecture.nb_classes, *x.shape[-2:])

    # ------------------------------------------------------------------ members

    def member_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Member ``index`` as an atomai ``Unet`` state dict (copies, on the CPU)."""
        if not 0 <= index < self.n_members:
            raise IndexError(f"member {index} does not exist (0..{self.n_members - 1})")
        member = {}
        for name, tensor in self.state_dict().items():
            if name.endswith("num_batches_tracked"):
                member[name] = tensor.detach().cpu().clone()
            else:
                size = tensor.shape[0] // self.n_members
                member[name] = tensor[index * size : (index + 1) * size].detach().cpu().clone().contiguous()
        return member

    def load_members(self, members: list[dict[str, torch.Tensor]]) -> None:
        """Fill every member from atomai ``Unet`` state dicts (shapes are checked)."""
        if len(members) != self.n_members:
            raise ValueError(f"expected {self.n_members} member state dicts, got {len(members)}")
        expected_names = set(self.state_dict())
        for index, member in enumerate(members):
            if set(member) != expected_names:
                missing, extra = sorted(expected_names - set(member)), sorted(set(member) - expected_names)
                raise ValueError(f"member {index} is not this U-Net architecture: missing {missing[:3]}, unexpected {extra[:3]}")
        packed = {}
        for name, tensor in self.state_dict().items():
            parts = [m[name] for m in members]
            if name.endswith("num_batches_tracked"):
                packed[name] = parts[0]
                continue
            expected = (tensor.shape[0] // self.n_members, *tensor.shape[1:])
            for index, part in enumerate(parts):
                if tuple(part.shape) != expected:
                    raise ValueError(f"member {index}: {name} has shape {tuple(part.shape)}, the architecture needs {expected}")
            packed[name] = torch.cat(parts, dim=0)
        self.load_state_dict(packed)

    @classmethod
    def from_seeds(cls, seeds: list[int], architecture: UnetArchitecture) -> PackedUnet:
        """Pack atomai U-Nets initialised with ``seeds`` (the ELIT ensemble: only the seed differs)."""
        net = cls(len(seeds), architecture)
        net.load_members([architecture.atomai_unet(seed).state_dict() for seed in seeds])
        return net
