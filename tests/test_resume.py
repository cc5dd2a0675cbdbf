"""Interrupted training loses nothing: signals, --resume, NaN losses and full disks."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from conftest import CLASS_NAMES, link_dataset, train_cli
from pneumolens.checkpoint import load_model, save_model
from pneumolens.cli import main
from pneumolens.models import create_model
from pneumolens.training.state import AtomicCheckpointIO

# Runs the real CLI in a child process and sends it a real signal from inside epoch 2.
HARNESS = textwrap.dedent(
    """
    import os, signal, sys
    # as in a terminal, whatever started the tests (a shell's background job starts with SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from pneumolens.training.module import Classifier
    original = Classifier.training_step
    def step(self, batch, i):
        if self.current_epoch == 2 and i == 0:
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return original(self, batch, i)
    Classifier.training_step = step
    from pneumolens.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)
RECIPE = ("--preset", "default", "--epochs", "4", "--image-size", "32", "--seed", "7", "--num-workers", "0")


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, as the interrupted run is: same threads, same library state."""
    cmd = [sys.executable, "-m", "pneumolens", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=dict(os.environ))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return link_dataset(tmp_path_factory.mktemp("resume"), {"train": dict.fromkeys(CLASS_NAMES, 20)})


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    proc = _cli("train", "--data", str(data), "--out", str(out), *RECIPE, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_keeps_last_epoch_and_resume_matches_uninterrupted(data, uninterrupted, tmp_path, sig, code):
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", HARNESS, sig, "train", "--data", str(data), "--out", str(out), *RECIPE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ))
    assert proc.returncode == code, proc.stderr[-2000:]
    assert f"stopped by {sig}" in proc.stderr and f"pneumolens train --resume {out}" in proc.stderr
    assert not (out / "model.safetensors").exists()  # no half-trained model file
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1  # epochs 0 and 1 complete; epoch 2 was cut
    assert not list(out.rglob("*.tmp"))
    if sig == "SIGTERM":  # as a run trained before the borderline share was a field: it resumes the same
        recorded = json.loads((out / "config.json").read_text())
        del recorded["borderline_share"]
        (out / "config.json").write_text(json.dumps(recorded))

    proc = _cli("train", "--resume", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = load_file(str(out / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for k in resumed:  # bit-identical on the CPU: same shuffles, augmentations and schedule
        assert torch.equal(resumed[k], uninterrupted[k]), k
    history = load_model(out).meta["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]  # both parts of the log merged


def test_an_interrupted_refit_resumes_its_twin_then_refits(data, tmp_path):
    refit = (*RECIPE, "--refit", "--start-from-epoch", "-1")
    full = tmp_path / "full"
    proc = _cli("train", "--data", str(data), "--out", str(full), *refit, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", HARNESS, "SIGINT", "train", "--data", str(data), "--out", str(out), *refit]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ))
    assert proc.returncode == 130, proc.stderr[-2000:]
    # the held-out twin was cut in its epoch 2; the hint resumes the refit, not the twin alone
    assert f"pneumolens train --resume {out}" in proc.stderr
    assert (out / "holdout" / "checkpoints" / "last.ckpt").is_file() and not list(out.rglob("*.safetensors"))

    proc = _cli("train", "--resume", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("holdout/model.safetensors", "model.safetensors"):  # both as if never interrupted
        resumed, whole = load_file(str(out / name)), load_file(str(full / name))
        assert resumed.keys() == whole.keys()
        assert all(torch.equal(resumed[k], whole[k]) for k in resumed), name


def test_resume_refusals(tmp_path, data, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a resumable run directory" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--lr", "0.1"]) == 2
    assert "drop --lr" in capsys.readouterr().err


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    from pneumolens.training.module import Classifier

    forward = Classifier.forward

    def poisoned(self, x):
        z = forward(self, x)
        return z * float("nan") if self.training and self.current_epoch == 1 else z

    monkeypatch.setattr(Classifier, "forward", poisoned)
    out = tmp_path / "run"
    rc = train_cli(data, out, "--num-workers", "0", epochs=3)
    err = capsys.readouterr().err
    assert rc == 1 and "training loss became nan at epoch 1" in err and str(out / "checkpoints" / "last.ckpt") in err
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not (out / "model.safetensors").exists()


def _full_disk_after(n_bytes: int):
    def write(checkpoint, path):
        with open(path, "wb") as f:
            f.write(b"\0" * n_bytes)
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_full_disk_during_checkpoint_save_leaves_the_previous_one(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 3, "w": torch.ones(4)}, path)
    monkeypatch.setattr(torch, "save", _full_disk_after(10))
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 4, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 3 and torch.equal(kept["w"], torch.ones(4))
    assert os.listdir(tmp_path) == ["last.ckpt"]  # the partial temporary file is gone


def test_full_disk_during_model_save_leaves_the_previous_model(tmp_path, monkeypatch):
    import pneumolens.checkpoint

    model = create_model("seed_cnn", in_channels=3, image_size=32)
    meta = {"architecture": {"name": "seed_cnn", "kwargs": {"in_channels": 3, "image_size": 32}}, "threshold": 0.5}
    meta["preprocessing"] = {"image_size": 32, "channels": 3}
    path = save_model(tmp_path / "model.safetensors", model, meta)
    before = load_model(path).sha256
    monkeypatch.setattr(pneumolens.checkpoint, "save_file", lambda t, p, metadata=None: _full_disk_after(100)(t, p))
    with pytest.raises(OSError, match="No space left"):
        save_model(path, create_model("seed_cnn", in_channels=3, image_size=32), meta)
    monkeypatch.undo()
    assert load_model(path).sha256 == before and os.listdir(tmp_path) == ["model.safetensors"]
