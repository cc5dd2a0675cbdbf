"""Sharpness-aware minimisation (Foret et al. 2021, "SAM"), as one function over gradients.

Each optimiser step takes its gradient not at the weights w but at w + e, where e moves rho along the
normalised gradient: e = rho * g / ||g||. The optimiser (AdamW here) then steps from w with that
gradient, which favours minima whose whole rho-neighbourhood has a low loss. It costs a second forward
and backward pass per step. Batch-norm running statistics are left as the first pass set them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def frozen_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Batch-norm layers normalise with the batch as usual but leave their running statistics alone."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum


@torch.no_grad()
def ascent_step(params: list[nn.Parameter], rho: float) -> list[torch.Tensor | None]:
    """e = rho * g / ||g|| over all gradients together (None where a parameter has no gradient)."""
    grads = [p.grad for p in params]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]))
    scale = rho / (norm + 1e-12)
    return [None if g is None else g * scale for g in grads]


def sharpness_aware_gradients(
    model: nn.Module,
    params: list[nn.Parameter],
    rho: float,
    loss_at: Callable[[], torch.Tensor],
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda g: g,
) -> torch.Tensor | None:
    """Replace each ``p.grad`` (the gradient at w) by the gradient at w + e; the weights end exactly as
    they began. ``loss_at`` recomputes the loss on the same batch; ``reduce`` averages a gradient over
    distributed processes. Returns the loss at w + e, or None when no parameter had a gradient."""
    if all(p.grad is None for p in params):
        return None
    steps = ascent_step(params, rho)
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, steps, strict=True):
            if e is not None:
                p.add_(e)
    for p in params:
        p.grad = None
    try:
        with torch.enable_grad(), frozen_norm_statistics(model):
            loss = loss_at()
            loss.backward()  # while the weights are still at w + e (autograd saved them)
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)  # a copy, not a subtraction: bit for bit the weights of before
    for p in params:
        if p.grad is not None:
            p.grad = reduce(p.grad)
    return loss.detach()
