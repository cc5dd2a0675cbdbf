"""Two training processes on the CPU (DDP over gloo): sharded data, one checkpoint that loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import CLASS_NAMES, link_dataset
from pneumolens.checkpoint import load_model


def test_two_process_ddp_on_cpu(tmp_path):
    data = link_dataset(tmp_path / "d", {"train": dict.fromkeys(CLASS_NAMES, 24)})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pneumolens", "train", "--data", str(data), "--out", str(out), "--preset", "seed"]
    cmd += ["--epochs", "2", "--image-size", "32", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    cmd += ["--val-fraction", "0.25", "--num-workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    split = json.loads((out / "split.json").read_text())
    shards = [set(json.loads((out / "shards" / f"rank{r}.json").read_text())) for r in (0, 1)]
    n = len(split["train"])
    # DistributedSampler gives each rank half the training set, padding the odd one out by repetition
    assert all(len(s) >= n // 2 for s in shards)
    assert shards[0] | shards[1] == set(split["train"])
    assert len(shards[0] & shards[1]) <= n % 2
    loaded = load_model(out)  # written once, by rank 0, and complete
    assert loaded.meta["training"]["world_size"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


SAM_DDP_SCRIPT = """
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader

from pneumolens.config import resolve_config
from pneumolens.training.module import Classifier


class SaveWeights(L.Callback):
    def on_train_end(self, trainer, pl_module):
        torch.save(pl_module.model.state_dict(), f"{sys.argv[1]}/rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    cfg = resolve_config(
        "default", sam_rho=float(sys.argv[2]), rotation=0.0, shift=0.0, zoom=0.0, ema_decay=0.0,
        model_kwargs={"dropout": 0.0, "widths": [8, 16, 16, 32]},
    )
    torch.manual_seed(0)
    batches = [
        {"image": torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8), "label": torch.tensor([1.0, 0, 1, 0]),
         "path": [f"b{i}_{k}" for k in range(4)], "skipped": []}
        for i in range(4)
    ]
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", devices=2, strategy="ddp", precision="32-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[SaveWeights()],
    )
    trainer.fit(Classifier(cfg.to_dict(), [1.0, 3.0]), DataLoader(batches, batch_size=None))
"""


def test_sharpness_aware_steps_keep_the_ranks_in_step_under_ddp(tmp_path):
    # Each rank sees other batches; the second pass runs outside DDP's wrapper, so its gradients must be
    # averaged by hand: otherwise the ranks' weights drift apart after the first step.
    import torch

    script = tmp_path / "sam_ddp.py"
    script.write_text(SAM_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "0.05"], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert set(ranks[0]) == set(ranks[1])
    learnt = [k for k in ranks[0] if "running_" not in k and "num_batches" not in k]  # batch-norm buffers are local
    assert len(learnt) > 10
    for k in learnt:
        assert torch.allclose(ranks[0][k], ranks[1][k], atol=1e-6), k
