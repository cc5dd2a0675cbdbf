"""Attribution maps for single-logit classifiers: Grad-CAM, occlusion and LIME, through Captum.

Every function takes a model and one preprocessed input ``x`` (1, C, S, S) and returns a map
(S, S) in [-1, 1]: positive where the image supports the explained class (the predicted one by
default), scaled by the map's largest absolute value. ``target_sign`` +1 explains PNEUMONIA, -1
explains NORMAL (the logit's sign flips).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import LayerAttribution, LayerGradCam, Lime, Occlusion
from skimage.segmentation import slic
from torch import nn


def _normalise(a: torch.Tensor) -> np.ndarray:
    a = a.detach().float()
    peak = a.abs().max()
    return (a / peak if peak > 0 else a).cpu().numpy()


def valid_layers(model: nn.Module) -> list[str]:
    """Named modules that output spatial feature maps: those holding a convolution, and the
    activations / poolings that sit beside convolutions in the same container."""
    modules = dict(model.named_modules())

    def has_conv(m: nn.Module) -> bool:
        return any(isinstance(sub, nn.Conv2d) for sub in m.modules())

    names = []
    for name, m in modules.items():
        parent = modules.get(name.rpartition(".")[0])  # the root model for top-level names
        if name and (
            has_conv(m) or (isinstance(m, nn.ReLU | nn.MaxPool2d) and parent is not None and has_conv(parent))
        ):
            names.append(name)
    return names


def resolve_layer(model: nn.Module, layer: str | None) -> tuple[str, nn.Module]:
    own = getattr(model, "feature_layer", None)  # the layer the model declares for Grad-CAM is always valid
    name = layer or own
    modules = dict(model.named_modules())
    if name not in modules or (name != own and name not in valid_layers(model)):
        raise ValueError(f"unknown layer {name!r}; valid: {', '.join(valid_layers(model))}")
    return name, modules[name]


class _Signed(nn.Module):
    """The model's logit for the explained class, as a (B,) tensor."""

    def __init__(self, model: nn.Module, sign: float) -> None:
        super().__init__()
        self.model, self.sign = model, sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sign * self.model(x)


def gradcam(model: nn.Module, x: torch.Tensor, target_sign: float = 1.0, layer: str | None = None) -> np.ndarray:
    """Grad-CAM on ``layer`` (default: the model's ``feature_layer``), upsampled to the input size.

    An ensemble (mean logit) without an explicit ``layer`` gets the mean of its members' maps, each
    taken before Grad-CAM's ReLU: with global-average pooling and a linear head a member's map is its
    logit spread over the film, so the mean is the ensemble's. Captum registers its hooks for the
    call only and removes them afterwards.
    """
    if layer is None and getattr(model, "feature_layers", None):
        maps = [_cam(m, x, target_sign, None, relu=False) for m in model.members]
        return _normalise(torch.stack(maps).mean(0)[0, 0].clamp_min(0))
    return _normalise(_cam(model, x, target_sign, layer, relu=True)[0, 0].clamp_min(0))


def _cam(model: nn.Module, x: torch.Tensor, target_sign: float, layer: str | None, relu: bool) -> torch.Tensor:
    _, module = resolve_layer(model, layer)
    cam = LayerGradCam(_Signed(model, target_sign), module)
    with torch.enable_grad():
        a = cam.attribute(x, relu_attributions=relu)  # (1, 1, h, w)
    return LayerAttribution.interpolate(a, tuple(x.shape[-2:]), interpolate_mode="bilinear")


def blurred(x: torch.Tensor, sigma_fraction: float = 1 / 16) -> torch.Tensor:
    """A heavily blurred copy: the 'information removed' baseline for occlusion and faithfulness."""
    sigma = max(1.0, sigma_fraction * x.shape[-1])
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]
    pad = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(pad, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


@torch.inference_mode()
def occlusion(
    model: nn.Module, x: torch.Tensor, target_sign: float = 1.0, window: int | None = None, stride: int | None = None
) -> np.ndarray:
    """Drop in the explained class's logit when a window is replaced by a blurred copy.

    The logit, not the probability: a confident model's probability saturates near 1 and hides
    which regions matter.

    ``window`` and ``stride`` default to 1/8 and 1/16 of the input side; all windows run in batches.
    """
    side = x.shape[-1]
    window = window or max(2, side // 8)
    stride = stride or max(1, window // 2)
    if not 0 < stride <= window <= side:
        raise ValueError(f"need 0 < stride <= window <= image side ({side}), got window {window}, stride {stride}")
    c = x.shape[1]
    occ = Occlusion(_Signed(model, target_sign))
    a = occ.attribute(
        x,
        sliding_window_shapes=(c, window, window),
        strides=(c, stride, stride),
        baselines=blurred(x),
        perturbations_per_eval=64,
    )
    return _normalise(a[0].mean(0))


def superpixels(x: torch.Tensor, n_segments: int = 64) -> np.ndarray:
    """SLIC superpixels for a grayscale input (S, S) labelled 0..n-1.

    Grayscale X-rays have no colour to separate regions, so SLIC runs on intensity alone with a
    compactness that keeps segments blob-shaped rather than following noise.
    """
    gray = x[0, 0].detach().cpu().numpy().astype(np.float64)
    seg = slic(
        gray, n_segments=n_segments, compactness=0.3, channel_axis=None, start_label=0, enforce_connectivity=True
    )
    _, seg = np.unique(seg, return_inverse=True)  # consecutive labels; SLIC itself is deterministic
    return seg.reshape(gray.shape)


def _lime_kernel(kernel_width: float = 0.25):
    """LIME's weighting: exponential kernel on the cosine distance in the interpretable (on/off) space."""

    def similarity(original, perturbed, perturbed_interpretable, **kwargs):
        z = perturbed_interpretable.float().flatten()
        cos = z.sum() / (z.norm() * (z.numel() ** 0.5)).clamp_min(1e-12)  # vs the all-ones original
        return torch.exp(-((1 - cos) ** 2) / kernel_width**2)

    return similarity


def lime(
    model: nn.Module,
    x: torch.Tensor,
    target_sign: float = 1.0,
    n_samples: int = 1000,
    n_segments: int = 64,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LIME over superpixels: (map (S, S), segments (S, S), weight per segment).

    Hidden superpixels take their blurred values; the surrogate fits the explained class's logit
    (probabilities saturate). A fixed ``seed`` gives the same map.
    """
    segments = superpixels(x, n_segments)
    mask = torch.from_numpy(segments).to(x.device)[None, None].expand_as(x)  # (1, C, S, S)
    explainer = Lime(
        _Signed(model, target_sign),
        interpretable_model=SkLearnRidge(alpha=1.0),
        similarity_func=_lime_kernel(),
    )
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        a = explainer.attribute(
            x,
            baselines=blurred(x),
            feature_mask=mask,
            n_samples=n_samples,
            perturbations_per_eval=batch_size,
            return_input_shape=True,
        )
    weights = np.array([float(a[0, 0][mask[0, 0] == k].mean()) for k in range(int(segments.max()) + 1)])
    return _normalise(a[0, 0]), segments, weights
