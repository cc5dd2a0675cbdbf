from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import real_images
from pneumolens.checkpoint import MODEL_FILENAME, ModelFileError, load_model, save_model
from pneumolens.inference import Predictor
from pneumolens.models import create_model

META = {
    "architecture": {"name": "resnet_small", "kwargs": {"in_channels": 1, "image_size": 64}},
    "preprocessing": {"image_size": 64, "channels": 1, "interpolation": "bilinear"},
    "threshold": 0.42,
}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet_small", in_channels=1, image_size=64).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics must survive the trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model, save_model(tmp_path / MODEL_FILENAME, model, META)


def test_round_trip_identical_outputs(saved):
    model, path = saved
    loaded = load_model(path.parent)  # the run directory works as well as the file
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k  # bit-identical weights and statistics
    x = torch.rand(3, 1, 64, 64)
    model.to(memory_format=torch.channels_last)  # as the loader lays it out, for the faster kernels
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    assert loaded.threshold == 0.42 and loaded.meta["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert "torch" in loaded.meta["versions"]


def test_round_trip_on_real_images(saved):
    model, path = saved
    files = real_images("test", "PNEUMONIA", 3)
    a = [p.probability for p in Predictor.from_checkpoint(path).predict_paths(files)]
    b = [p.probability for p in Predictor.from_checkpoint(path).predict_paths(files)]
    assert a == b and all(0.0 <= v <= 1.0 for v in a)


def test_tampered_weights_are_detected(saved):
    _, path = saved
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    tensors = load_file(str(path))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(ModelFileError, match="do not match their recorded SHA-256"):
        load_model(path)


@pytest.mark.parametrize(
    "field, value, match", [("format_version", "99", "format version '99'"), ("format", "x", "not a pneumolens")]
)
def test_wrong_header(saved, field, value, match):
    _, path = saved
    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
    header[field] = value
    save_file(load_file(str(path)), str(path), metadata=header)
    with pytest.raises(ModelFileError, match=match):
        load_model(path)


def test_wrong_architecture(saved):
    _, path = saved
    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
    meta = json.loads(header["meta"])
    meta["architecture"] = {"name": "seed_cnn", "kwargs": {"in_channels": 3, "image_size": 64}}
    header["meta"] = json.dumps(meta)
    save_file(load_file(str(path)), str(path), metadata=header)
    with pytest.raises(ModelFileError, match="do not fit architecture 'seed_cnn'"):
        load_model(path)


def test_truncated_and_foreign_files(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_model(path)
    pickle_like = tmp_path / "evil.safetensors"
    pickle_like.write_bytes(b"\x80\x04\x95" + np.arange(10).tobytes())
    with pytest.raises(ModelFileError):
        load_model(pickle_like)
    with pytest.raises(ModelFileError, match="no model file found"):
        load_model(tmp_path / "missing")
