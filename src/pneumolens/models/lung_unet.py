"""Lung-field segmenter: MONAI's residual U-Net with per-image intensity standardisation.

Standardising inside the network (not in a separate transform) means every caller, from training
to serving, feeds it the same thing: a grayscale image in [0, 1].
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNet
from torch import nn


class LungUNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 128,
        channels: tuple[int, ...] = (16, 32, 64, 128, 256),
        num_res_units: int = 2,
    ) -> None:
        super().__init__()
        del image_size  # fully convolutional; the size is recorded for callers
        self.unet = UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=1,
            channels=tuple(channels),
            strides=(2,) * (len(channels) - 1),
            num_res_units=num_res_units,
            norm="batch",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        return self.unet((x - mean) / std)  # (B, 1, H, W) logits
