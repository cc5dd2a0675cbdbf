"""A compact residual CNN for 1-channel X-rays, trained from scratch on a CPU.

Stem (two 3x3 convs, stride 2) then four stages of basic residual blocks with batch norm (optionally
stochastic depth), global average (or generalised-mean) pooling, dropout and one logit. With
``spatial_blocks=k`` only the first k residual blocks keep 3x3 convolutions and the rest are
pointwise (1x1), which caps each output cell's receptive field (BagNet, Brendel & Bethge 2019): the
logit is then an average of local patch evidence instead of a reading of the whole film. With
``antialias=True`` every stride-2 step low-passes before it subsamples (Zhang 2019, "Making
convolutional networks shift-invariant again"): the convolution runs at stride 1 and a fixed 3x3
binomial filter then takes every second pixel, so fine texture cannot alias into the features. Two
domain-generalisation options act on feature statistics, which carry a film's "style" (exposure,
contrast, detector texture) more than its content: ``ibn=True`` instance-normalises half the channels of
the first norm of every block in the first three stages (IBN-Net-a, Pan et al. 2018), and
``mixstyle=p`` mixes the per-channel means and standard deviations of two films of the batch after each
of the first three stages, with probability p per batch, in training only (MixStyle, Zhou et al. 2021).
Far fewer parameters than ResNet-18 (no ImageNet weights can be had here, and ~5,000 training images
do not support a large net).
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3, ibn: bool = False) -> nn.Sequential:
    """Conv + batch norm (+ IBN, half instance norm, with ``ibn``)."""
    norm = IBN(cout) if ibn else nn.BatchNorm2d(cout)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), norm)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, zero a residual branch for a random share
    ``p`` of the samples and scale the rest by 1 / (1 - p); the identity at evaluation."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class BlurPool(nn.Module):
    """Low-pass, then subsample: a fixed, normalised 3x3 binomial filter ([1, 2, 1] x [1, 2, 1] / 16)
    per channel at stride 2, edges reflected. No learnt parameters, and the filter is not saved."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = torch.outer(k, k) / 16
        self.register_buffer("kernel", k.expand(channels, 1, 3, 3).contiguous(), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        return nn.functional.conv2d(x, self.kernel.to(x.dtype), stride=2, groups=self.channels)


class IBN(nn.Module):
    """Instance norm on the first half of the channels, batch norm on the rest (IBN-Net-a, Pan et al. 2018):
    the instance-normalised half forgets each film's contrast and brightness, the other half keeps
    what batch norm keeps. Instance norm uses each image's own statistics in training and evaluation alike."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.half = channels // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(a.contiguous()), self.BN(b.contiguous())), dim=1)


class MixStyle(nn.Module):
    """Mix feature statistics between films (Zhou et al. 2021). In training, with probability ``p`` per
    batch, each sample's per-channel mean and standard deviation are replaced by a Beta(alpha, alpha)
    mix of its own and those of another sample of the batch; the label is kept. The identity at
    evaluation, and for batches of one. Statistics are computed in float32 and not back-propagated through,
    as in the paper. Draws come from torch's global generator, so a seeded run repeats."""

    def __init__(self, p: float, alpha: float = 0.1, eps: float = 1e-6) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"mixstyle must be a probability in [0, 1], got {p!r}")
        self.p, self.alpha, self.eps = p, alpha, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.shape[0] < 2 or torch.rand(()).item() > self.p:
            return x
        n = x.shape[0]
        xf = x.float()
        mu = xf.mean((2, 3), keepdim=True).detach()
        sig = (xf.var((2, 3), keepdim=True) + self.eps).sqrt().detach()
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((n, 1, 1, 1)).to(x.device)
        perm = torch.randperm(n).to(x.device)
        mu_mix = lam * mu + (1 - lam) * mu[perm]
        sig_mix = lam * sig + (1 - lam) * sig[perm]
        return ((xf - mu) / sig * sig_mix + mu_mix).to(x.dtype)


def _down_conv_bn(cin: int, cout: int, stride: int, kernel: int, antialias: bool, ibn: bool = False) -> nn.Sequential:
    """Conv + batch norm (IBN with ``ibn``); with ``antialias`` a stride-2 conv runs at stride 1 and a
    BlurPool subsamples."""
    if stride == 1 or not antialias:
        return _conv_bn(cin, cout, stride, kernel, ibn)
    return nn.Sequential(*_conv_bn(cin, cout, 1, kernel, ibn), BlurPool(cout))


class BasicBlock(nn.Module):
    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        drop_path: float = 0.0,
        kernel: int = 3,
        antialias: bool = False,
        ibn: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = _down_conv_bn(cin, cout, stride, kernel, antialias, ibn)
        self.conv2 = _conv_bn(cout, cout, 1, kernel)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 and antialias:  # blur first, then the projection (Zhang 2019's order)
            self.shortcut = nn.Sequential(BlurPool(cin), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        elif stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        nn.init.zeros_(self.conv2[1].weight)  # each block starts as identity: stabler from scratch
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop_path(self.conv2(self.act(self.conv1(x)))) + self.shortcut(x))


class GlobalAvgPool(nn.Module):
    """Average over height and width, (B, C, H, W) -> (B, C, 1, 1).

    The same numbers as ``nn.AdaptiveAvgPool2d(1)`` (bit for bit on the CPU, forward and backward;
    a test checks this), but its CUDA backward is deterministic: the adaptive pool's is not, and
    refuses to run under Lightning's ``deterministic=True``, which every training run sets."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class GeM(nn.Module):
    """Generalised-mean pooling, (mean x^p)^(1/p) with a learnt p: 1 is average pooling, large p
    approaches max pooling (Radenovic et al. 2018, image retrieval)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean((2, 3), keepdim=True).pow(1.0 / p)


class ResNetSmall(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 128,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        blocks: tuple[int, ...] = (1, 1, 2, 1),
        dropout: float = 0.3,
        pool: str = "avg",
        drop_path: float = 0.0,
        spatial_blocks: int | None = None,
        antialias: bool = False,
        standardize: bool = False,
        ibn: bool = False,
        mixstyle: float = 0.0,
        halves: bool = False,
    ) -> None:
        super().__init__()
        del image_size  # global pooling: any input size works
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths and blocks need one entry per stage, got widths={widths}, blocks={blocks}")
        if spatial_blocks is not None and (type(spatial_blocks) is not int or not 0 <= spatial_blocks <= sum(blocks)):
            raise ValueError(
                f"spatial_blocks must be an integer in [0, {sum(blocks)}] (the number of residual blocks), "
                f"got {spatial_blocks!r}"
            )
        if not isinstance(antialias, bool):  # a JSON string such as "false" would otherwise switch it on
            raise ValueError(f"antialias must be true or false, got {antialias!r}")
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize must be true or false, got {standardize!r}")
        if not isinstance(ibn, bool):
            raise ValueError(f"ibn must be true or false, got {ibn!r}")
        if isinstance(mixstyle, bool) or not isinstance(mixstyle, int | float):
            raise ValueError(f"mixstyle must be a probability in [0, 1], got {mixstyle!r}")
        if not isinstance(halves, bool):
            raise ValueError(f"halves must be true or false, got {halves!r}")
        self.halves = halves
        self.standardize = standardize
        self.stem = nn.Sequential(
            _down_conv_bn(in_channels, widths[0] // 2, stride=2, kernel=3, antialias=antialias),
            nn.ReLU(inplace=True),
            _conv_bn(widths[0] // 2, widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        cin = widths[0]
        # Stochastic depth grows linearly with depth, from 0 at the first block to ``drop_path`` at the last.
        rates = torch.linspace(0, drop_path, sum(blocks)).tolist()
        # IBN and MixStyle act on the first three stages (both papers' layout), never on the last.
        self.mix_after: tuple[int, ...] = ()  # indices of the blocks that end stages 1 to 3
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            early = i < min(3, len(widths) - 1)
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) or (i == 0 and j == 0) else 1
                kernel = 3 if spatial_blocks is None or len(stages) < spatial_blocks else 1
                stages.append(
                    BasicBlock(
                        cin, w, stride, rates[len(stages)], kernel=kernel, antialias=antialias, ibn=ibn and early
                    )
                )
                cin = w
            if early:
                self.mix_after += (len(stages) - 1,)
        self.stages = nn.Sequential(*stages)
        self.mixstyle: nn.Module | None = MixStyle(float(mixstyle)) if mixstyle else None
        self.feature_layer = f"stages.{len(stages) - 1}"  # last residual block, for Grad-CAM
        if halves:  # Grad-CAM reads the halves' features put back side by side, one map per film
            self.join = nn.Identity()
            self.feature_layer = "join"
        if pool not in ("avg", "gem"):
            raise ValueError(f"unknown pool {pool!r}; valid: avg, gem")
        self.pool = GlobalAvgPool() if pool == "avg" else GeM()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, 1)
        self.num_features = cin  # channels of forward_features' output (timm's name)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:  # each image to mean 0, standard deviation 1: exposure and contrast removed
            x = (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + 1e-3)
        if not self.halves:
            return self._backbone(x)
        # One network for both lungs: the crop's left and right halves go through the same weights in one
        # batch, not mirrored (the mediastinum's side still says which lung it is); their features are
        # put back side by side.
        b, w = x.shape[0], x.shape[-1]
        if w % 2:
            raise ValueError(f"halves needs an even input width, got {w}")
        f = self._backbone(torch.cat((x[..., : w // 2], x[..., w // 2 :])))
        return self.join(torch.cat((f[:b], f[b:]), dim=-1))

    def _backbone(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.mixstyle is None:
            return self.stages(x)  # (B, C, H/32, W/32)
        for i, block in enumerate(self.stages):
            x = block(x)
            if i in self.mix_after:
                x = self.mixstyle(x)
        return x

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        if not self.halves:
            return self.fc(self.drop(self.pool(f).flatten(1))).squeeze(1)  # (B,)
        w = f.shape[-1] // 2  # each half's logit; the film's is the larger (pneumonia in either lung)
        sides = [self.fc(self.drop(self.pool(h).flatten(1))).squeeze(1) for h in (f[..., :w], f[..., w:])]
        return torch.maximum(*sides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
