"""Pretrain a preset's network on the training films (SimSiam) without the supervised part.

    python benchmarks/ssl_pretrain.py --data ../shared/data/chest_xray --epochs 150 --out runs/ssl150 \\
        [--accelerator gpu]

Then start supervised training from those features, with the same preset and input flags:

    pneumolens train --data ../shared/data/chest_xray --init runs/ssl150/backbone.safetensors --out runs/x

Same network, preprocessing, seeds and patient split as ``pneumolens train --ssl-epochs N`` (which
pretrains inside the run); this script exists to pretrain once (or longer, on a GPU) and fine-tune
several times. Prints the backbone file's path.
"""

from __future__ import annotations

import argparse
import logging

from pneumolens.config import resolve_config
from pneumolens.data.cache import cached_images
from pneumolens.training.fit import training_split
from pneumolens.training.pretrain import pretrain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, help="per 256 films (default: the config's 0.05)")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--accelerator", choices=["cpu", "gpu", "auto"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = resolve_config(
        args.preset,
        ssl_epochs=args.epochs,
        ssl_lr=args.lr,
        ssl_batch_size=args.batch_size,
        accelerator=args.accelerator,
    )
    split, _ = training_split(args.data, cfg)
    cache = cached_images(split.train + split.val, cfg.preprocess, None, cfg.num_workers)
    print(pretrain(cfg, split.train, cache, split.val, args.out))


if __name__ == "__main__":
    main()
