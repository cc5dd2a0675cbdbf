"""``pneumolens train | train-lungs | train-orientation | train-age-check | ensemble | export``: making model files."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumolens.cli.common import DEFAULT_DATA_ENV, data_arg, devices, fraction, json_object, positive_int, probability

if TYPE_CHECKING:
    from pneumolens.config import TrainConfig


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from pneumolens.config import PRESETS

    t = sub.add_parser("train", help="train a model on DATA/train (validation carved out by patient)")
    data_arg(t, required=False)
    t.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last complete epoch, with its own config and data",
    )
    t.add_argument(
        "--config",
        metavar="FILE",
        help="a JSON or YAML config: a run's config.json to train it again, or some fields of one; "
        "the fields it leaves out come from its preset (or --preset), and flags given here go on top",
    )
    t.add_argument("--preset", choices=sorted(PRESETS), help="the recipe to start from (default: default)")
    t.add_argument(
        "--print-config",
        action="store_true",
        help="print the config these arguments resolve to (JSON, as --config reads it) and exit without training",
    )
    t.add_argument("--out", default=None, help="run directory (default: runs/<preset>)")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="train into an --out that holds an earlier run (a model, or an interrupted run's checkpoints), "
        "removing what that training wrote there; without it such an --out is refused",
    )
    t.add_argument("--model", choices=["resnet_small", "seed_cnn"], help="architecture (default: the preset's)")
    t.add_argument("--model-kwargs", type=json_object, help="architecture arguments as JSON, e.g. '{\"dropout\": 0.5}'")
    t.add_argument("--epochs", type=positive_int)
    t.add_argument("--image-size", type=positive_int)
    t.add_argument("--batch-size", type=positive_int)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float, help="AdamW / RMSprop weight decay")
    t.add_argument("--seed", type=int)
    t.add_argument(
        "--split-seed",
        type=int,
        help="seed of the patient-held-out validation split (default: the preset's, 42 for default; "
        "--seed for seed); fix it to train models that share one validation split",
    )
    t.add_argument("--patience", type=int, help="early stopping: epochs without a lower validation loss")
    t.add_argument(
        "--start-from-epoch",
        type=int,
        help="early stopping watches the validation loss from this epoch on; negative counts from the end "
        "(-1: keep the final weights)",
    )
    t.add_argument("--warmup-epochs", type=int, help="linear learning-rate warm-up (cosine schedule)")
    t.add_argument("--ema-decay", type=float, help="keep an exponential moving average of the weights (e.g. 0.998)")
    t.add_argument(
        "--ema-warmup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ramp the average's decay up over the first steps, min(D, (1 + n) / (10 + n))",
    )
    t.add_argument("--limit", type=positive_int, help="use at most N images of train/ (stratified), for smoke runs")
    t.add_argument(
        "--lungs",
        choices=["none", "crop", "mask", "soft", "crop_soft"],
        help="lung-aware preprocessing: crop to the lungs (crop_soft: and dim between them), zero or dim outside them",
    )
    t.add_argument(
        "--lung-margin", type=float, help="margin around the lungs for crop/mask, fraction of the shorter side"
    )
    t.add_argument("--equalize", choices=["none", "clahe"], help="contrast equalisation (CLAHE) at model size")
    t.add_argument("--optimizer", choices=["rmsprop", "adamw", "sgd"], help="optimiser (sgd: momentum 0.9, Nesterov)")
    t.add_argument("--clahe-clip", type=float, help="CLAHE clip limit in (0, 1] (default 0.01; 1: no limit)")
    t.add_argument(
        "--lung-gamma",
        type=float,
        metavar="TARGET",
        help="exposure normalisation: a gamma per film that brings its median inside the lungs to TARGET (e.g. 0.45)",
    )
    t.add_argument("--rotation", type=float, help="augmentation: max rotation in degrees")
    t.add_argument("--shift", type=float, help="augmentation: max width/height shift, fraction of the side")
    t.add_argument("--zoom", type=float, help="augmentation: max zoom deviation (0.1 = 0.9x to 1.1x)")
    t.add_argument("--gamma", type=float, help="augmentation: random gamma, x ** g with g in [1/(1+G), 1+G]")
    t.add_argument("--contrast", type=float, help="augmentation: contrast scaled by c in [1-C, 1+C] about the mean")
    t.add_argument("--mixup", type=float, help="augmentation: mixup with Beta(A, A) weights (e.g. 0.2)")
    t.add_argument("--hflip", type=float, help="augmentation: probability of a left-right mirror")
    t.add_argument("--erase", type=float, help="augmentation: probability of random erasing (one rectangle)")
    t.add_argument("--blur", type=float, help="augmentation: Gaussian blur, sigma uniform in [0, SIGMA] pixels")
    t.add_argument(
        "--bias-field",
        type=float,
        metavar="B",
        help="augmentation: brightness ramp exp(s * ramp) across the film, s in [-B, B], random direction",
    )
    t.add_argument("--label-smoothing", type=float, help="training targets y * (1 - E) + E / 2")
    t.add_argument("--teacher", help="a trained model (same patient split) to distil from, with --distill-weight")
    t.add_argument("--distill-weight", type=float, help="weight of the teacher's probabilities in the loss")
    t.add_argument(
        "--rank-weight",
        type=float,
        help="weight of a pairwise ranking loss (RankNet) on every pneumonia-normal pair of a batch",
    )
    t.add_argument(
        "--group-dro",
        type=float,
        metavar="ETA",
        help="group DRO over the file-name groups (normal IM, normal NORMAL2, bacterial, viral) with step ETA "
        "(e.g. 0.01); needs --class-weights none",
    )
    t.add_argument(
        "--sam-rho",
        type=float,
        help="sharpness-aware minimisation: gradients taken RHO along the normalised gradient (e.g. 0.05; 2x compute)",
    )
    t.add_argument(
        "--subtype-weight",
        type=float,
        help="weight of an auxiliary bacterial-vs-viral loss on pneumonia images named so (training only)",
    )
    t.add_argument(
        "--series-adversary",
        type=float,
        metavar="WEIGHT",
        help="weight of an adversary (gradient reversal) that keeps the features from telling the Kaggle normal "
        "series IM and NORMAL2 apart (e.g. 0.5; training only)",
    )
    t.add_argument("--class-weights", choices=["seed", "balanced", "none"])
    t.add_argument(
        "--balanced-sampler", action=argparse.BooleanOptionalAction, default=None, help="oversample the minority class"
    )
    t.add_argument(
        "--patient-weighting",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="within each class, weight a patient's films 1/(films of that patient): patients count equally",
    )
    t.add_argument(
        "--exposure-balance",
        type=float,
        metavar="STRENGTH",
        help="weight the films so that the lungs' exposure (median grey) does not predict the label: 1 gives each "
        "class the pooled distribution of lung medians, 0 is off (training.exposure)",
    )
    t.add_argument(
        "--ssl-epochs",
        type=int,
        help="self-supervised pretraining (SimSiam) on the training films for N epochs first (default 0: none)",
    )
    t.add_argument("--ssl-lr", type=float, help="pretraining learning rate per 256 films (SGD; default 0.05)")
    t.add_argument(
        "--init",
        help="start the network's features from a backbone file (RUN/pretrain/backbone.safetensors of a --ssl-epochs "
        "run, or benchmarks/ssl_pretrain.py; the last layer starts fresh), or fine-tune a trained model (a model "
        "file or run directory of the same split, input and architecture; every weight, temperature unfolded)",
    )
    t.add_argument(
        "--exclude",
        help="leave the files listed in this file (one name or path per line, or a CSV with a path column) out of "
        "training, e.g. suspected label errors (benchmarks/label_issues.py); the validation part stays whole",
    )
    t.add_argument("--val-fraction", type=float)
    t.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after the run with its validation split held out (kept in OUT/holdout), train the same recipe again on "
        "every training film, validation too, and give that model the held-out run's temperature and threshold",
    )
    t.add_argument(
        "--threshold-policy",
        help="operating point chosen on validation: fixed:T, sensitivity:S, specificity:S or youden",
    )
    t.add_argument(
        "--calibrate", action=argparse.BooleanOptionalAction, default=None, help="temperature scaling on validation"
    )
    band = t.add_mutually_exclusive_group()
    band.add_argument(
        "--borderline-share",
        type=fraction,
        help="the share of the validation films, those nearest the threshold, that the borderline band holds: "
        "results inside it carry the caution borderline (default 0.1)",
    )
    band.add_argument(
        "--borderline-risk",
        type=fraction,
        help="instead: the narrowest borderline band outside which the validation calls are wrong at most this "
        "share of the time (a risk they cannot meet falls back to the share, with a warning)",
    )
    t.add_argument(
        "--borderline-confidence",
        type=fraction,
        help="with --borderline-risk: bound the error rate outside the band at this confidence (e.g. 0.95: by its "
        "Clopper-Pearson upper bound), a promise for films like the validation films rather than on them",
    )
    t.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    t.add_argument("--accelerator", choices=["cpu", "gpu", "auto"])
    t.add_argument("--devices", type=devices, help="devices (processes on the CPU) per node")
    t.add_argument("--num-nodes", type=positive_int, help="machines (under SLURM or torchrun)")
    t.add_argument("--strategy", help="Lightning strategy, e.g. ddp (default: auto)")
    t.add_argument(
        "--precision",
        choices=["auto", "32-true", "bf16-mixed", "16-mixed"],
        help="auto: bf16-mixed where the CPU or GPU has native bfloat16, else 32-true",
    )
    t.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="preprocess every image once into a cache and train from it (default: on)",
    )
    t.add_argument("--cache-dir", help="where the cache lives (default: $PNEUMOLENS_CACHE_DIR or ~/.cache/pneumolens)")
    t.set_defaults(run=cmd_train)

    en = sub.add_parser("ensemble", help="average trained models (mean logit, or mean weights) into one model file")
    en.add_argument("members", nargs="+", help="model files or run directories (at least 2, one validation split)")
    data_arg(en)
    en.add_argument(
        "--average-weights",
        action="store_true",
        help="one network whose weights are the members' mean (a model soup): members fine-tuned from one start "
        "(train --init MODEL); it costs one network at inference",
    )
    en.add_argument("--out", required=True, help="run directory for model.safetensors and val_metrics.json")
    en.add_argument(
        "--overwrite", action="store_true", help="replace the model an --out already holds (never a member's own)"
    )
    en_band = en.add_mutually_exclusive_group()
    en_band.add_argument(
        "--borderline-share",
        type=fraction,
        help="the share of the validation films that the borderline band holds (default: the first member's rule)",
    )
    en_band.add_argument(
        "--borderline-risk",
        type=fraction,
        help="instead: the narrowest band outside which the validation calls are wrong at most this share of the time",
    )
    en.add_argument(
        "--borderline-confidence",
        type=fraction,
        help="with --borderline-risk: bound the error rate outside the band at this confidence (Clopper-Pearson)",
    )
    en.set_defaults(run=cmd_ensemble)

    ex = sub.add_parser("export", help="export a model to ONNX")
    ex.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    ex.add_argument("--format", choices=["onnx"], default="onnx")
    ex.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    ex.set_defaults(run=cmd_export)

    tl = sub.add_parser("train-lungs", help="train the lung segmenter from scratch on NLM lung masks")
    tl.add_argument("--data", default="../shared/data/lung_masks", help="folder with manifest.csv, images/, masks/")
    tl.add_argument("--out", default="runs/lungs")
    tl.add_argument("--epochs", type=positive_int)
    tl.add_argument("--image-size", type=positive_int)
    tl.add_argument("--max-minutes", type=float, help="stop training after this many minutes")
    tl.add_argument("--seed", type=int)
    tl.set_defaults(run=cmd_train_lungs)

    to = sub.add_parser(
        "train-orientation",
        help="train a mirrored-, inverted- or turned-film check from scratch (no labels: films shown both ways)",
    )
    to.add_argument(
        "--transform", choices=["mirror", "invert", "turn"], default="mirror", help="what the check learns to see"
    )
    to.add_argument("--data", default="../shared/data/chest_xray", help="the Kaggle folder (its train/ is read)")
    to.add_argument("--lung-masks", default="../shared/data/lung_masks", help="the NLM folder (manifest.csv, images/)")
    to.add_argument("--out", default="runs/orientation")
    to.add_argument("--epochs", type=positive_int)
    to.add_argument("--image-size", type=positive_int, help="input side in pixels (96 by default)")
    to.add_argument("--limit", type=positive_int, help="at most N Kaggle films (smoke runs)")
    to.add_argument(
        "--borders", type=probability, help="black bands on each side of training films with this probability"
    )
    to.add_argument("--seed", type=int)
    to.set_defaults(run=cmd_train_orientation)

    ta = sub.add_parser(
        "train-age-check",
        help="train the adult-film check from scratch (Kaggle children against the Shenzhen adults)",
    )
    ta.add_argument("--data", default="../shared/data/chest_xray", help="the Kaggle folder (its train/ is read)")
    ta.add_argument("--lung-masks", default="../shared/data/lung_masks", help="the NLM folder (manifest.csv, images/)")
    ta.add_argument("--out", default="runs/age_check")
    ta.add_argument("--epochs", type=positive_int)
    ta.add_argument("--limit", type=positive_int, help="at most N Kaggle films (smoke runs)")
    ta.add_argument("--seed", type=int)
    ta.set_defaults(run=cmd_train_age_check)


def _given(cfg: Any, args: argparse.Namespace, *names: str) -> Any:
    """``cfg`` (a frozen dataclass) with the options in ``names`` that were given on the command line."""
    import dataclasses

    return dataclasses.replace(cfg, **{n: getattr(args, n) for n in names if getattr(args, n) is not None})


def cmd_train_orientation(args: argparse.Namespace) -> int:
    from pneumolens.lungs.train_orientation import OrientationConfig, fit_orientation

    cfg = _given(OrientationConfig(), args, "transform", "epochs", "image_size", "limit", "seed", "borders")
    print(fit_orientation(args.data, args.lung_masks, args.out, cfg))
    return 0


def cmd_train_age_check(args: argparse.Namespace) -> int:
    from pneumolens.lungs.train_age_check import AgeCheckConfig, fit_age_check

    cfg = _given(AgeCheckConfig(), args, "epochs", "limit", "seed")
    print(fit_age_check(args.data, args.lung_masks, args.out, cfg))
    return 0


def cmd_train_lungs(args: argparse.Namespace) -> int:
    from pneumolens.lungs.train import LungTrainConfig, fit_lungs

    cfg = _given(LungTrainConfig(), args, "epochs", "image_size", "max_minutes", "seed")
    print(fit_lungs(args.data, args.out, cfg))
    return 0


RECIPE_FLAGS = (
    "model model_kwargs optimizer epochs start_from_epoch patience image_size batch_size lr weight_decay seed "
    "split_seed warmup_epochs ema_decay ema_warmup limit lungs lung_margin lung_gamma equalize clahe_clip "
    "rotation shift zoom gamma contrast mixup hflip erase blur bias_field label_smoothing teacher distill_weight "
    "rank_weight group_dro sam_rho subtype_weight series_adversary class_weights balanced_sampler patient_weighting "
    "exposure_balance ssl_epochs ssl_lr init exclude val_fraction refit threshold_policy calibrate borderline_share "
    "borderline_risk borderline_confidence precision"
).split()


RUNTIME_FLAGS = ("num_workers", "accelerator", "devices", "num_nodes", "strategy", "cache")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The config that ``pneumolens train`` with these parsed arguments trains: the preset's, then
    ``--config``'s fields, then the flags given."""
    from pneumolens.config import read_config_file, resolve_config

    preset, given = read_config_file(args.config) if getattr(args, "config", None) else (None, {})
    preset = args.preset or preset or "default"
    if getattr(args, "config", None):  # the file's own errors are said with its name, before any flag is applied
        try:
            resolve_config(preset, **given)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{args.config}: {e}") from None
    flags = {k: getattr(args, k) for k in (*RECIPE_FLAGS, *RUNTIME_FLAGS) if getattr(args, k) is not None}
    cfg = resolve_config(preset, **{**given, **flags})
    cleared = {k: None for k, v in given.items() if v is None and k not in flags}  # null in the file: null
    return dataclasses.replace(cfg, **cleared) if cleared else cfg


def cmd_train(args: argparse.Namespace) -> int:
    from pneumolens.config import TrainConfig
    from pneumolens.training.fit import fit
    from pneumolens.training.state import TrainingDiverged, TrainingInterrupted

    if args.resume:
        given = [
            f"--{k.replace('_', '-')}" for k in ("config", "preset", *RECIPE_FLAGS) if getattr(args, k) is not None
        ]
        if given or args.out:
            raise ValueError(f"--resume continues the run's own recipe; drop {', '.join(given) or '--out'}")
        if args.overwrite:
            raise ValueError("--resume continues a run and --overwrite starts one again: give one of them")
        run = Path(args.resume)
        try:
            cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
            data = args.data or json.loads((run / "run.json").read_text())["data"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{run}: not a resumable run directory ({e})") from None
        out, resume = str(run), True
    else:
        cfg = train_config(args)
        if args.print_config:  # what would train, as a file --config takes: nothing read or written
            print(cfg.to_json())
            return 0
        if not args.data:
            raise ValueError(f"--data is required (or set ${DEFAULT_DATA_ENV})")
        data, out, resume = args.data, args.out or f"runs/{cfg.preset}", False
    try:
        path = fit(data, cfg, out, cache_dir=args.cache_dir, resume=resume, overwrite=args.overwrite)
    except TrainingInterrupted as e:
        print(f"pneumolens: {e}", file=sys.stderr)
        return 143 if e.signal_name == "SIGTERM" else 130
    except TrainingDiverged as e:
        print(f"pneumolens: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from pneumolens.training.ensemble import build_ensemble

    print(
        build_ensemble(
            args.members,
            args.data,
            args.out,
            average_weights=args.average_weights,
            borderline_share=args.borderline_share,
            borderline_risk=args.borderline_risk,
            borderline_confidence=args.borderline_confidence,
            overwrite=args.overwrite,
        )
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pneumolens.checkpoint import load_model
    from pneumolens.export import export_onnx

    print(export_onnx(load_model(args.model), args.out))
    return 0
