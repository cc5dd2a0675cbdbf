"""Random affine and intensity augmentation applied to whole batches on the training device.

Semantics follow Keras' ImageDataGenerator as the seed used it: rotation uniform in ±r degrees,
shift uniform in ±s of the side per axis, zoom uniform in [1-z, 1+z] per axis, and edge pixels
repeated to fill ("nearest" fill mode). One batched ``grid_sample`` replaces per-image Python work.
Intensity jitter (gamma, contrast) imitates other exposures and detectors, and a bias field (a smooth
ramp of brightness across the film) the heel effect of the tube, a rotated patient or grid cut-off;
left-right mirroring and random erasing (Zhong et al., 2020) ask the network not to rely on one side
or one spot; mixup blends pairs of images and their labels. All of these are off in both presets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pneumolens.config import AugmentConfig


def _uniform(lo: float, hi: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` float32 draws, uniform in [lo, hi), on the CPU (the same stream whatever the device)."""
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float32)


def random_affine(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply an independent random affine transform to each image of ``x`` (B, C, H, W)."""
    if cfg.rotation == 0 and cfg.shift == 0 and cfg.zoom == 0:
        return x

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return _uniform(lo, hi, x.shape[0], generator)

    theta_rad = uniform(-cfg.rotation, cfg.rotation) * (math.pi / 180.0)
    zx, zy = uniform(1 - cfg.zoom, 1 + cfg.zoom), uniform(1 - cfg.zoom, 1 + cfg.zoom)
    # grid coordinates span [-1, 1], so a shift of s * side is 2 * s in grid units
    tx, ty = 2 * uniform(-cfg.shift, cfg.shift), 2 * uniform(-cfg.shift, cfg.shift)
    cos, sin = torch.cos(theta_rad), torch.sin(theta_rad)
    # Maps each output pixel to the input location it samples from (as Keras does).
    theta = torch.stack(
        [torch.stack([zx * cos, -zy * sin, tx], dim=1), torch.stack([zx * sin, zy * cos, ty], dim=1)], dim=1
    ).to(device=x.device, dtype=x.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_intensity(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random gamma, then random contrast about each image's mean, per image of ``x`` in [0, 1]."""
    if cfg.gamma == 0 and cfg.contrast == 0:
        return x
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)

    def uniform(lo: float, hi: float) -> torch.Tensor:  # one draw per image, broadcast over its pixels
        return _uniform(lo, hi, x.shape[0], generator).view(shape).to(device=x.device, dtype=x.dtype)

    if cfg.gamma > 0:
        span = math.log1p(cfg.gamma)
        x = x.clamp_min(0).pow(uniform(-span, span).exp())
    if cfg.contrast > 0:
        mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        x = (x - mean) * uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
    return x.clamp(0, 1)


def random_bias_field(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Multiply each image by its own smooth ramp ``exp(s * (cos t * u + sin t * v))``, with ``u`` and ``v``
    running from -1 to 1 across the image, ``s`` uniform in [-``cfg.bias_field``, ``cfg.bias_field``] and
    the direction ``t`` uniform in [0, 2 pi); then clip to [0, 1]. The log ratio between the centres of
    the image's two halves along ``t`` is ``s``: one lung brighter than the other without disease."""
    if cfg.bias_field == 0:
        return x
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    strength = _uniform(-cfg.bias_field, cfg.bias_field, n, generator)
    angle = _uniform(0, 2 * math.pi, n, generator)
    u = torch.linspace(-1, 1, w).view(1, 1, w)
    v = torch.linspace(-1, 1, h).view(1, h, 1)
    log_field = strength.view(-1, 1, 1) * (angle.cos().view(-1, 1, 1) * u + angle.sin().view(-1, 1, 1) * v)
    field = log_field.exp().unsqueeze(1).to(device=x.device, dtype=x.dtype)  # (B, 1, H, W): every channel alike
    return (x * field).clamp(0, 1)


def random_flip_erase(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``cfg.hflip``; then, with probability ``cfg.erase``,
    fill one rectangle (2-20% of its area, aspect ratio 0.3-3.3) with the image's mean."""
    if cfg.hflip == 0 and cfg.erase == 0:
        return x
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    per_image = (n,) + (1,) * (x.dim() - 1)
    if cfg.hflip > 0:
        flip = (_uniform(0, 1, n, generator) < cfg.hflip).view(per_image).to(x.device)
        x = torch.where(flip, x.flip(-1), x)
    if cfg.erase > 0:
        hit = _uniform(0, 1, n, generator) < cfg.erase
        area = _uniform(0.02, 0.2, n, generator) * (h * w)
        aspect = _uniform(math.log(0.3), math.log(1 / 0.3), n, generator).exp()
        eh = (area * aspect).sqrt().clamp(1, h)
        ew = (area / aspect).sqrt().clamp(1, w)
        top = _uniform(0, 1, n, generator) * (h - eh)
        left = _uniform(0, 1, n, generator) * (w - ew)
        rows = torch.arange(h, dtype=torch.float32).view(1, h, 1)
        cols = torch.arange(w, dtype=torch.float32).view(1, 1, w)
        inside = (
            (rows >= top.view(-1, 1, 1))
            & (rows < (top + eh).view(-1, 1, 1))
            & (cols >= left.view(-1, 1, 1))
            & (cols < (left + ew).view(-1, 1, 1))
            & hit.view(-1, 1, 1)
        )  # (B, H, W)
        box = inside.unsqueeze(1).to(x.device)
        mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        x = torch.where(box, mean.expand_as(x), x)
    return x


def random_blur(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Blur each image with a Gaussian of its own sigma, uniform in [0, ``cfg.blur``] pixels: another
    detector's sharpness or processing. Separable, reflect-padded; sigma near 0 leaves the image as it is."""
    if cfg.blur == 0:
        return x
    n, c, h, w = x.shape
    sigma = _uniform(0, cfg.blur, n, generator).clamp_min(1e-3).repeat_interleave(c)  # (B*C,)
    radius = min(math.ceil(3 * cfg.blur), (min(h, w) - 1) // 2)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma.view(-1, 1) ** 2))
    k = (k / k.sum(1, keepdim=True)).to(x.device, x.dtype)  # (B*C, 2r+1)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)  # along rows
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)  # along columns
    return y.view(n, c, h, w)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Every per-image augmentation of ``cfg``, in the training order: affine, intensity, bias field,
    blur, then mirroring and erasing (mixup, which also mixes labels, is the caller's)."""
    x = random_bias_field(random_intensity(random_affine(x, cfg), cfg), cfg)
    return random_flip_erase(random_blur(x, cfg), cfg)


def mixup(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blend each sample with a random partner of the batch (Zhang et al., 2018).

    Images, soft labels and per-sample loss weights are mixed with the same weight
    ``lam ~ Beta(alpha, alpha)``, drawn per sample from the global generator (seeded by training).
    """
    if alpha <= 0 or len(x) < 2:
        return x, y, w
    lam = torch.distributions.Beta(alpha, alpha).sample((len(x),)).to(device=x.device, dtype=x.dtype)
    partner = torch.randperm(len(x), device=x.device)
    lx = lam.view(-1, *([1] * (x.dim() - 1)))
    mixed = lx * x + (1 - lx) * x[partner]
    lam = lam.to(y.dtype)
    return mixed, lam * y + (1 - lam) * y[partner], lam * w + (1 - lam) * w[partner]
