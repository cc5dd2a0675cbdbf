"""A run directory's earlier training: refused, or replaced when asked, before a new run starts.

Training into a folder that holds an earlier run used to mix the two: Lightning saved the new
checkpoints beside the old ones (``last-v1.ckpt``), so ``--resume`` went on from the earlier run's
``last.ckpt``, and the finished model the folder held was overwritten without a word.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from pneumolens.checkpoint import MODEL_FILENAME
from pneumolens.training.pretrain import BACKBONE_FILENAME

log = logging.getLogger(__name__)
HOLDOUT_DIR = "holdout"  # a refit's held-out twin, inside the refit's run directory
# what ``fit`` writes into a run directory; ``--overwrite`` removes these and nothing else
RUN_OUTPUTS = (
    MODEL_FILENAME,
    "checkpoints",
    "logs",
    "shards",
    "pretrain",
    HOLDOUT_DIR,
    "config.json",
    "run.json",
    "split.json",
    "val_metrics.json",
)


class RunExists(ValueError):
    """The run directory holds an earlier run that a new one would overwrite."""


def earlier_run(out: Path) -> str | None:
    """``"finished"`` when ``out`` holds a trained model, ``"interrupted"`` when it holds checkpoints
    (its own, its refit twin's) or a pretrained backbone but no model, None when nothing of value."""
    if (out / MODEL_FILENAME).is_file():
        return "finished"
    checkpoints = any((out / "checkpoints").glob("*.ckpt")) or any((out / HOLDOUT_DIR / "checkpoints").glob("*.ckpt"))
    made = (out / HOLDOUT_DIR / MODEL_FILENAME).is_file() or (out / "pretrain" / BACKBONE_FILENAME).is_file()
    return "interrupted" if checkpoints or made else None


def first_process() -> bool:
    """Whether this process is the run's first: a distributed run's other processes (started by
    Lightning or torchrun, each with its rank in the environment) find the folder already begun."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def make_room(out: Path, overwrite: bool, inputs: Sequence[tuple[str, str | None]] = ()) -> None:
    """Before a new (not resumed) run in ``out``: refuse an earlier run there, naming what it holds
    and what to do, or with ``overwrite`` remove what training wrote there (``RUN_OUTPUTS``; other
    files, such as an evaluation's, are left). ``inputs`` (flag, path) are files the run reads, such
    as its ``--init`` and ``--teacher``: one inside ``out`` is never removed; the run is refused.

    Raises:
        RunExists: ``out`` holds a finished or an interrupted run and ``overwrite`` is false, or an
            input lies inside ``out``.
    """
    held = earlier_run(out)
    if held is None or not first_process():
        return
    for flag, path in inputs:
        if path and (Path(path).resolve() == out.resolve() or out.resolve() in Path(path).resolve().parents):
            raise RunExists(f"{flag} {path} lies in --out {out}, which holds an earlier run; train into another --out")
    if not overwrite:
        if held == "finished":
            raise RunExists(
                f"{out} holds a trained model ({MODEL_FILENAME}); train into another --out, or give --overwrite "
                "to replace that run"
            )
        raise RunExists(
            f"{out} holds an interrupted run (its checkpoints); continue it with `pneumolens train --resume {out}`, "
            "or give --overwrite to start again"
        )
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    log.warning("%s: the earlier %s run there removed (--overwrite)", out, held)
