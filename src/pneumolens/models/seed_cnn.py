"""The seed's Keras network, layer for layer.

Conv(32)-Pool, Conv(64)-Pool, Conv(128)-Pool, Conv(128)-Pool (3x3, same padding, ReLU, 2x2 max
pooling), dropout 0.2, flatten, dense 128 ReLU, dropout 0.2, dense 128, dense 512, dense 1. The two
dense layers after the first have no activation in the original code (Keras' default is linear), so
they are kept linear here. The sigmoid lives in the loss (BCE with logits) for numerical stability.

Each block pools before its ReLU: max-pooling and ReLU commute (both are monotone), so the outputs
and gradients are Keras' conv-ReLU-pool exactly, while the ReLU and its backward touch a quarter of
the values (8-16% more training images/s on the CPU, `benchmarks/seed_step.py`).
"""

from __future__ import annotations

import torch
from torch import nn


class SeedCNN(nn.Module):
    def __init__(self, in_channels: int = 3, image_size: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for width in (32, 64, 128, 128):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            c = width
        self.features = nn.Sequential(*layers)
        side = image_size // 16
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(c * side * side, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, 128),
            nn.Linear(128, 512),
            nn.Linear(512, 1),
        )
        self.num_features = c  # channels of forward_features' output (timm's name)
        self.feature_layer = "features.11"  # the last block's output (pooled, ReLU): Grad-CAM's layer
        for m in self.modules():  # Keras defaults: Glorot-uniform kernels, zero biases
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 128, H/16, W/16)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f).squeeze(1)  # (B,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
