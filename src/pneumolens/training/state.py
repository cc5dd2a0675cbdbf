"""What makes an interrupted run resumable exactly: atomic Lightning checkpoints and RNG state.

A Lightning checkpoint is written like the model file (temporary file, fsync, rename), so a kill or
a full disk mid-save leaves the previous one readable. Each checkpoint also carries the global
random-number generators, so that ``train --resume`` draws the same shuffles and augmentations as
the uninterrupted run would have.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pneumolens.checkpoint import atomic_write


class TrainingInterrupted(RuntimeError):
    """Training was stopped by a signal; ``last`` is the last complete checkpoint (or None)."""

    def __init__(self, run: Path, signal_name: str, last: Path | None) -> None:
        self.run, self.signal_name, self.last = run, signal_name, last
        if last is not None:
            hint = f"the last complete epoch is kept in {last}; continue with: pneumolens train --resume {run}"
        else:
            hint = "no epoch had completed, so there is nothing to resume"
        super().__init__(f"training in {run} stopped by {signal_name}; {hint}")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the last good checkpoint."""


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported")
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def rng_state() -> dict[str, Any]:
    """The global generators as plain tensors, lists and ints (loadable with ``weights_only``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    internal, version, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
