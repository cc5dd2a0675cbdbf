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
