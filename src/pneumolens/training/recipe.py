"""The shipped model's recipe (round 34 of docs/results.md), as the ``pneumolens`` commands that build it.

No single ``train`` run makes the shipped model. It is the weight average ("soup") of three short
fine-tunes of a ``--preset default`` draw, each of which also learns the probabilities of the mean-logit
ensemble of two such draws (distillation):

1. ``draw17``, ``draw22``: ``train --preset default`` at training seeds 17 and 22 (one patient split);
2. ``teacher``: ``ensemble draw17 draw22`` (mean logit);
3. ``finetune1..3``: ``train --init draw17 --teacher teacher`` for 8 epochs at a quarter of the learning
   rate, no warm-up, seeds 1-3;
4. ``soup``: ``ensemble finetune1 finetune2 finetune3 --average-weights``: one network, the model.

47-50 minutes on the 2-core Intel development VM (``benchmarks/default_recipe.py`` runs it and prints
each step's wall time). Seeds 17 and 22 are the two best validated draws of rounds 26-28. Training is
deterministic on one kind of CPU only: the shipped seed-17 draw came from an AMD EPYC VM, so a rebuild
elsewhere (or on other films) gives another soup; expect the recipe's figures, not the shipped weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

DRAW_SEEDS = (17, 22)  # the first draw is the fine-tunes' start
FINETUNE_SEEDS = (1, 2, 3)
# what a fine-tune changes from --preset default (its flags; the start and the teacher are added per run)
FINETUNE_FLAGS = ("--epochs", "8", "--lr", "0.0005", "--warmup-epochs", "0", "--distill-weight", "1")


@dataclasses.dataclass(frozen=True)
class Step:
    """One command of the recipe: ``pneumolens.cli.main(argv)`` writes the run directory ``out``."""

    name: str
    argv: tuple[str, ...]
    out: Path
    trains: bool  # a training run (an ensemble or a soup only averages)


def shipped_recipe(data: str | Path, out: str | Path, extra: Sequence[str] = ()) -> list[Step]:
    """The recipe's steps in order, writing under ``out``; ``extra`` flags go to every ``train`` (last wins).

    ``extra`` is for smoke runs (``--limit 80 --image-size 32 --epochs 1``); it must not change the
    patient split between steps, since a fine-tune and its teacher must share their start's split.
    """
    data, out = str(data), Path(out)
    draws = [out / f"draw{s}" for s in DRAW_SEEDS]
    teacher = out / "teacher"
    tunes = [out / f"finetune{s}" for s in FINETUNE_SEEDS]

    def train(run: Path, seed: int, *flags: str) -> Step:
        argv = ("train", "--data", data, "--preset", "default", "--seed", str(seed), *flags, *extra, "--out", str(run))
        return Step(run.name, argv, run, trains=True)

    def average(run: Path, members: list[Path], *flags: str) -> Step:
        argv = ("ensemble", *map(str, members), "--data", data, *flags, "--out", str(run))
        return Step(run.name, argv, run, trains=False)

    return [
        *(train(run, seed) for run, seed in zip(draws, DRAW_SEEDS, strict=True)),
        average(teacher, draws),
        *(
            train(run, seed, "--init", str(draws[0]), "--teacher", str(teacher), *FINETUNE_FLAGS)
            for run, seed in zip(tunes, FINETUNE_SEEDS, strict=True)
        ),
        average(out / "soup", tunes, "--average-weights"),
    ]
