"""Self-supervised pretraining (SimSiam) and starting the classifier from its features."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import train_cli
from pneumolens.config import TrainConfig, resolve_config
from pneumolens.models import create_model
from pneumolens.training.module import architecture_of
from pneumolens.training.pretrain import BACKBONE_FILENAME, SimSiam, backbone_state, load_backbone, simsiam_loss


def test_simsiam_loss_by_hand_and_its_stopped_gradient():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    same = simsiam_loss(z * 3, z, z * 3, z)  # predictions parallel to the projections: cosine 1
    assert math.isclose(same.item(), -1.0, rel_tol=1e-6)
    p = torch.tensor([[0.0, 1.0], [5.0, 0.0]], requires_grad=True)
    assert math.isclose(simsiam_loss(p, z, p, z).item(), 0.0, abs_tol=1e-7)  # orthogonal: cosine 0
    q = torch.tensor([[1.0, 1.0], [0.0, 1.0]], requires_grad=True)
    # cos(q0, z0) = 1/sqrt(2), cos(q1, z1) = 1: mean over the batch, both branches alike
    loss = simsiam_loss(q, z, q, z)
    assert math.isclose(loss.item(), -(1 / math.sqrt(2) + 1) / 2, rel_tol=1e-6)
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert z.grad is None  # the projections are targets: no gradient flows into them


def _backbone_file(path, cfg, model):
    meta = {"architecture": architecture_of(cfg), "preprocessing": cfg.to_dict()["preprocess"]}
    save_file(backbone_state(model), str(path), {"pneumolens": json.dumps(meta)})
    return path


def test_load_backbone_copies_features_keeps_the_head_and_names_a_wrong_file(tmp_path):
    cfg = resolve_config("default", image_size=32)
    arch = architecture_of(cfg)
    torch.manual_seed(0)
    pretrained = create_model(arch["name"], **arch["kwargs"])
    path = _backbone_file(tmp_path / BACKBONE_FILENAME, cfg, pretrained)
    torch.manual_seed(1)
    fresh = create_model(arch["name"], **arch["kwargs"])
    head = fresh.fc.weight.detach().clone()
    load_backbone(fresh, path, cfg)
    for k, v in pretrained.state_dict().items():
        if k.startswith("fc."):
            assert not torch.equal(v, fresh.state_dict()[k])  # the last layer keeps its own initialisation
        else:
            assert torch.equal(v, fresh.state_dict()[k]), k
    assert torch.equal(fresh.fc.weight, head)

    other = resolve_config("default", image_size=32, model_kwargs={"widths": [8, 16, 16, 24]})
    with pytest.raises(ValueError, match=f"{BACKBONE_FILENAME}: pretrained with architecture"):
        load_backbone(create_model("resnet_small", **architecture_of(other)["kwargs"]), path, other)
    with pytest.raises(ValueError, match="pretrained with preprocessing"):
        load_backbone(fresh, path, resolve_config("crop_clahe", image_size=32, lungs="none"))
    with pytest.raises(FileNotFoundError, match="no pretrained backbone"):
        load_backbone(fresh, tmp_path / "missing.safetensors", cfg)
    tensors = load_file(str(path))
    tensors.pop(next(iter(tensors)))
    meta = json.dumps({"architecture": architecture_of(cfg), "preprocessing": cfg.to_dict()["preprocess"]})
    save_file(tensors, str(tmp_path / "short.safetensors"), {"pneumolens": meta})
    with pytest.raises(ValueError, match="short.safetensors: its tensors do not match"):
        load_backbone(fresh, tmp_path / "short.safetensors", cfg)


def test_train_with_pretraining_writes_the_backbone_and_starts_from_it(tiny_data, tmp_path, monkeypatch):
    import pneumolens.training.fit as fit_module

    loaded = []

    def recording_load(model, path, cfg):
        load_backbone(model, path, cfg)
        loaded.append((path, {k: v.clone() for k, v in backbone_state(model).items()}))

    monkeypatch.setattr(fit_module, "load_backbone", recording_load)
    out = tmp_path / "ssl"
    assert train_cli(tiny_data, out, "--ssl-epochs", "2", "--ssl-lr", "0.1", preset="default", epochs=1) == 0
    backbone = out / "pretrain" / BACKBONE_FILENAME
    assert len(loaded) == 1 and loaded[0][0] == backbone  # the classifier started from the written features
    assert all(torch.equal(v, load_file(str(backbone))[k]) for k, v in loaded[0][1].items())
    with safe_open(str(backbone), framework="pt") as f:
        meta = json.loads(f.metadata()["pneumolens"])
    split = json.loads((out / "split.json").read_text())
    info = meta["pretraining"]
    assert (info["method"], info["epochs"], info["lr"], info["films"]) == ("simsiam", 2, 0.1, len(split["train"]))
    assert -1.0 <= info["final"]["ssl_loss"] <= 1.0 and info["final"]["ssl_spread"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["ssl_epochs"] == 2 and config["ssl_lr"] == 0.1
    # the saved features are the pretraining network's, moved away from its seeded starting point
    cfg = TrainConfig.from_dict(config)
    L.seed_everything(cfg.seed, verbose=False)
    start = SimSiam(cfg.to_dict(), lr=1.0).model
    before = backbone_state(start)
    learnt = load_file(str(backbone))
    assert set(learnt) == set(before)
    weights = [k for k, _ in start.named_parameters() if not k.startswith("fc.")]
    assert all(not torch.equal(learnt[k], before[k]) for k in weights)  # every layer took optimiser steps


def test_pretraining_refuses_what_it_cannot_do(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="ssl_epochs must be >= 0"):
        resolve_config("default", ssl_epochs=-1)
    with pytest.raises(ValueError, match="ssl_lr must be > 0"):
        resolve_config("default", ssl_lr=0.0)
    from pneumolens.training.fit import fit

    with pytest.raises(ValueError, match="--ssl-epochs pretrains on one device"):
        fit(tiny_data, resolve_config("default", image_size=32, ssl_epochs=1, devices=2), tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_init_starts_the_network_from_a_backbone_file(tiny_data, tmp_path, monkeypatch):
    import pneumolens.training.fit as fit_module
    import pneumolens.training.warm_start as warm_start

    cfg = resolve_config("default", image_size=32)
    arch = architecture_of(cfg)
    torch.manual_seed(5)
    path = _backbone_file(tmp_path / "features.safetensors", cfg, create_model(arch["name"], **arch["kwargs"]))
    started = []

    def recording_load(model, p, c):
        load_backbone(model, p, c)
        started.append({k: v.clone() for k, v in backbone_state(model).items()})

    monkeypatch.setattr(warm_start, "load_backbone", recording_load)
    out = tmp_path / "run"
    assert train_cli(tiny_data, out, "--init", str(path), preset="default", epochs=1) == 0
    # twice: the trial network checks the file before any data is read, then the trained network starts from it
    assert len(started) == 2
    assert all(torch.equal(v, load_file(str(path))[k]) for state in started for k, v in state.items())
    assert json.loads((out / "config.json").read_text())["init"] == str(path)
    assert not (out / "pretrain").exists()
    with pytest.raises(ValueError, match="pick one"):
        resolve_config("default", init=str(path), ssl_epochs=2)
    other = tmp_path / "other"  # features learnt for another input size: refused, naming the file
    with pytest.raises(ValueError, match="features.safetensors: pretrained with architecture"):
        fit_module.fit(tiny_data, resolve_config("default", image_size=48, init=str(path)), other)
    assert not other.exists()  # refused before anything was read or written
