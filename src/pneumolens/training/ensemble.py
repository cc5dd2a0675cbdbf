"""``build_ensemble``: several trained model files into one that averages their logits, or (with
``average_weights``) into one network whose weights are the members' mean.

The members must have been validated on the same patient split and read the same input; none may
have trained on its validation films (a refit). A weight average ("model soup", Wortsman et al.
2022) needs members fine-tuned from one start (``train --init MODEL``), which stay in its basin:
independently trained networks do not average. Either way the result's temperature and threshold are
fitted on that validation split like a trained model's (the members' own policy), so its file is
used like any other: predict, evaluate, explain, serve, export.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumolens.checkpoint import MODEL_FILENAME, LoadedModel, ModelFileError, atomic_write, load_model, save_model
from pneumolens.config import TrainConfig, check_band_rule
from pneumolens.evaluation.calibration import unfold_temperature
from pneumolens.evaluation.metrics import binary_metrics
from pneumolens.evaluation.selective import band_by_rule
from pneumolens.inference import default_workers, predict_samples
from pneumolens.models import create_model
from pneumolens.training.distill import SPLIT_FIELDS
from pneumolens.training.fit import operating_point, training_split

log = logging.getLogger(__name__)


def member_config(loaded: LoadedModel) -> TrainConfig:
    """The training config a member file records; raises ModelFileError (naming it) if it cannot join."""
    if loaded.meta.get("architecture", {}).get("name") == "ensemble":
        raise ModelFileError(f"{loaded.path}: already an ensemble; give its members instead")
    if "config" not in loaded.meta:
        raise ModelFileError(f"{loaded.path}: records no training config, so its validation split is unknown")
    cfg = TrainConfig.from_dict(loaded.meta["config"])
    if cfg.refit:
        raise ModelFileError(
            f"{loaded.path}: a refit, trained on its validation films; an ensemble's threshold needs held-out films"
        )
    return cfg


def check_compatible(members: Sequence[LoadedModel], configs: Sequence[TrainConfig]) -> None:
    """Same split, same input, same lung segmenter, no file twice; raises ValueError naming the odd one."""
    first, cfg0 = members[0], configs[0]
    seen: dict[str, Path] = {}
    for loaded, cfg in zip(members, configs, strict=True):
        if loaded.sha256 in seen:
            raise ValueError(f"{loaded.path}: the same weights as {seen[loaded.sha256]}; give each member once")
        seen[loaded.sha256] = loaded.path
        for name in SPLIT_FIELDS:
            if getattr(cfg, name) != getattr(cfg0, name):
                raise ValueError(
                    f"{loaded.path}: validated with {name}={getattr(cfg, name)!r}, {first.path} with "
                    f"{getattr(cfg0, name)!r}; members must share one validation split"
                )
        if loaded.meta["preprocessing"] != first.meta["preprocessing"]:
            differ = {k: v for k, v in loaded.meta["preprocessing"].items() if first.meta["preprocessing"].get(k) != v}
            raise ValueError(f"{loaded.path}: reads other input than {first.path}: {differ}")
        if loaded.meta.get("lung_segmenter_sha256") != first.meta.get("lung_segmenter_sha256"):
            raise ValueError(f"{loaded.path}: trained with another lung segmenter than {first.path}")


def averaged_network(members: Sequence[LoadedModel]) -> nn.Module:
    """One network whose every weight (batch-norm statistics too) is the members' mean, each member's
    folded temperature taken out first; raises ValueError naming a member that is not a fine-tune of
    the first one's start (one start: one architecture, checked when each fine-tune began)."""
    first = members[0]
    start = first.meta.get("training", {}).get("init_sha256")
    for m in members:
        theirs = m.meta.get("training", {}).get("init_sha256")
        if theirs is None:
            raise ValueError(
                f"{m.path}: not fine-tuned from a trained model (train --init MODEL); the weights of networks "
                "trained apart do not average"
            )
        if theirs != start:
            raise ValueError(f"{m.path}: fine-tuned from weights {theirs[:12]}, {first.path} from {start[:12]}")
    states = []
    for m in members:
        unfold_temperature(m.model, m.meta.get("calibration", {}))
        states.append(m.model.state_dict())
    mean = {
        k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v.clone()
        for k, v in states[0].items()
    }
    arch = first.meta["architecture"]
    with torch.random.fork_rng(devices=[]):
        model = create_model(arch["name"], **arch.get("kwargs", {}))
    model.load_state_dict(mean)
    return model.to(memory_format=torch.channels_last)


def mean_logit_network(members: Sequence[LoadedModel]) -> nn.Module:
    model = create_model("ensemble", members=[m.meta["architecture"] for m in members])
    for net, m in zip(model.members, members, strict=True):
        net.load_state_dict(m.model.state_dict())
    return model


def build_ensemble(
    members: Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    average_weights: bool = False,
    borderline_share: float | None = None,
    borderline_risk: float | None = None,
    borderline_confidence: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out/model.safetensors`` (and ``out/val_metrics.json``): the members' mean logit, or
    with ``average_weights`` one network of their mean weights, with temperature and threshold
    fitted on their validation split of ``data``, and a ``borderline`` band holding
    ``borderline_share`` of those films, or the narrowest one outside which their calls are wrong
    at most ``borderline_risk`` of the time (with ``borderline_confidence``: by the Clopper-Pearson
    upper bound of that rate; default: the first member's rule). An ``out`` that holds a model is
    refused unless ``overwrite``, and a member's own run directory always.

    Raises:
        ModelFileError: a member file is unusable or cannot join (the message names it).
        ValueError: fewer than two members, members from different splits or inputs, (averaging
            weights) members that are not fine-tunes of one start, or an ``out`` that holds a model.
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 model files, got {len(members)}")
    check_band_rule(borderline_share, borderline_risk, confidence=borderline_confidence)
    loaded = [load_model(m) for m in members]
    target = Path(out) / MODEL_FILENAME
    for given, m in zip(members, loaded, strict=True):  # before, the ensemble was written over the member
        if Path(m.path).resolve() == target.resolve():
            raise ValueError(f"--out {out} is the run directory of the member {given}; write the ensemble elsewhere")
    if target.exists() and not overwrite:
        raise ValueError(f"{out} holds a model ({MODEL_FILENAME}); write into another --out, or give --overwrite")
    configs = [member_config(m) for m in loaded]
    check_compatible(loaded, configs)
    cfg = configs[0]
    if borderline_share is None and borderline_risk is None:  # the first member's rule
        borderline_share, borderline_risk = cfg.borderline_share, cfg.borderline_risk
        borderline_confidence = cfg.borderline_confidence
    model = (averaged_network if average_weights else mean_logit_network)(loaded).eval()
    split, _ = training_split(data, cfg)
    logits, errors = predict_samples(
        model, split.val, loaded[0].preprocess, num_workers=default_workers(len(split.val)), logits=True
    )
    for path, reason in errors.items():
        log.warning("validation film skipped, %s: %s", path, reason)
    val = [s for s in split.val if s.path in logits]
    if len({s.label for s in val}) < 2:
        raise ValueError(f"{data}: the validation split needs films of both classes, got {len(val)} readable")
    y = np.array([s.label for s in val])
    for m in loaded:  # another dataset root would give another "validation" split, maybe trained-on films
        rec = m.meta.get("metrics", {}).get("val", {})
        if rec and (rec.get("n"), rec.get("n_positive")) != (len(y), int(y.sum())):
            raise ValueError(
                f"{m.path}: validated on {rec.get('n')} films ({rec.get('n_positive')} pneumonia), but {data} "
                f"gives {len(y)} ({int(y.sum())}); give the data it was trained on"
            )
    z = np.array([logits[s.path] for s in val])
    calibration = operating_point(model, y, z, cfg)
    val_p = 1 / (1 + np.exp(-z / calibration["temperature"]))
    try:
        band = band_by_rule(
            y, val_p, calibration["threshold"], borderline_share, borderline_risk, borderline_confidence
        )
    except ValueError as e:  # a risk these films cannot meet
        raise ValueError(f"{data}: {e} (--borderline-risk)") from None
    val_metrics = binary_metrics(y, val_p, calibration["threshold"])
    kind = "soup" if average_weights else "ensemble"
    arch = {"name": "ensemble", "kwargs": {"members": [m.meta["architecture"] for m in loaded]}}
    listing = [
        {"name": m.meta.get("name"), "sha256": m.sha256, "seed": c.seed, "metrics": m.meta.get("metrics", {})}
        for m, c in zip(loaded, configs, strict=True)
    ]
    meta: dict[str, Any] = {
        "name": f"{loaded[0].meta.get('name', 'pneumolens')}-{kind}{len(loaded)}",
        "architecture": loaded[0].meta["architecture"] if average_weights else arch,
        "preprocessing": loaded[0].meta["preprocessing"],
        "threshold": calibration["threshold"],
        "calibration": calibration,
        "borderline": band,
        "config": loaded[0].meta["config"],  # the first member's; all share split and input
        # one network records what it averages; "members" would read as a mean logit
        "averaged_weights_of" if average_weights else "members": listing,
        "metrics": {"val": val_metrics},
    }
    if "lung_segmenter_sha256" in loaded[0].meta:
        meta["lung_segmenter_sha256"] = loaded[0].meta["lung_segmenter_sha256"]
    out = Path(out)
    path = save_model(out / MODEL_FILENAME, model, meta)
    atomic_write(out / "val_metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(val_metrics, indent=2)))
    log.info(
        "%s of %d: validation ROC-AUC %.5f, threshold %.3f",
        kind,
        len(loaded),
        val_metrics["roc_auc"],
        meta["threshold"],
    )
    return path
