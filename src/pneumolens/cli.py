"""Command line: ``pneumolens train | evaluate | calibrate | predict | explain | segment | serve | export | listen |
watch | audit | train-lungs | train-orientation``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pneumolens.config import TrainConfig

DEFAULT_DATA_ENV = "PNEUMOLENS_DATA"
NOTICE = "Decision support only: pneumolens does not make a diagnosis; a clinician reads the X-ray."


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _fraction(s: str) -> float:
    v = float(s)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {s}")
    return v


def _json_object(s: str) -> dict:
    try:
        v = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {s}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f'must be a JSON object such as {{"dropout": 0.5}}, got {s}')
    return v


def _probability(s: str) -> float:
    v = float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def _devices(s: str) -> int | str:
    return s if s == "auto" else _positive_int(s)


def _data_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    env = os.environ.get(DEFAULT_DATA_ENV)
    p.add_argument(
        "--data",
        default=env,
        required=required and env is None,
        help=f"dataset root, class-folder directory or CSV manifest (default: ${DEFAULT_DATA_ENV})",
    )


def _tls_flags(parser: argparse.ArgumentParser, prefix: str, cert: str, whose: str, ca: str | None = None) -> None:
    """``PREFIX-cert``, ``PREFIX-key`` and ``PREFIX-ca``: a PEM certificate, its key, and the CA that
    signed ``whose`` certificate (or the ``ca`` help given)."""
    parser.add_argument(f"{prefix}-cert", help=cert)
    parser.add_argument(f"{prefix}-key", help=f"TLS: the PEM private key of {prefix}-cert")
    parser.add_argument(f"{prefix}-ca", help=f"TLS: {ca or f'the PEM CA that signed {whose} certificate'}")


def build_parser() -> argparse.ArgumentParser:
    from pneumolens import __version__
    from pneumolens.config import PRESETS

    parser = argparse.ArgumentParser(prog="pneumolens", description=__doc__, epilog=NOTICE)
    parser.add_argument("--version", action="version", version=f"pneumolens {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on DATA/train (validation carved out by patient)")
    _data_arg(t, required=False)
    t.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last complete epoch, with its own config and data",
    )
    t.add_argument("--preset", choices=sorted(PRESETS), default="default")
    t.add_argument("--out", default=None, help="run directory (default: runs/<preset>)")
    t.add_argument("--model", choices=["resnet_small", "seed_cnn"], help="architecture (default: the preset's)")
    t.add_argument(
        "--model-kwargs", type=_json_object, help="architecture arguments as JSON, e.g. '{\"dropout\": 0.5}'"
    )
    t.add_argument("--epochs", type=_positive_int)
    t.add_argument("--image-size", type=_positive_int)
    t.add_argument("--batch-size", type=_positive_int)
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
    t.add_argument("--limit", type=_positive_int, help="use at most N images of train/ (stratified), for smoke runs")
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
    t.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    t.add_argument("--accelerator", choices=["cpu", "gpu", "auto"])
    t.add_argument("--devices", type=_devices, help="devices (processes on the CPU) per node")
    t.add_argument("--num-nodes", type=_positive_int, help="machines (under SLURM or torchrun)")
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

    e = sub.add_parser("evaluate", help="score a model on DATA/test (or a class-folder directory / CSV)")
    e.add_argument(
        "--model", default=None, help="model file or run directory (default: the model shipped with pneumolens)"
    )
    _data_arg(e)
    e.add_argument("--json", dest="json_out", help="write the metrics as JSON to this file")
    e.add_argument("--report", help="write an HTML report with figures into this directory")
    e.add_argument("--csv", help="write one row per film (label, call, probability, outcome, flags, copy_of) here")
    e.add_argument("--threshold", type=_probability, help="override the model's operating point")
    e.add_argument(
        "--group-by",
        metavar="ATTRIBUTE",
        help="report subgroups by a DICOM device or acquisition attribute (e.g. Manufacturer, "
        "ManufacturerModelName, InstitutionName, ViewPosition; never a patient's), or by lung-exposure: "
        "whether the median inside the lung mask is above 0.5 (grey lungs)",
    )
    e.add_argument(
        "--explain",
        default="occlusion",
        choices=["gradcam", "occlusion", "lime", "none"],
        help="with --report: explain the errors with this method (occlusion: the faithful one; gradcam: fastest)",
    )

    c = sub.add_parser("calibrate", help="refit a model's operating point on a site's own labelled films")
    c.add_argument(
        "--model", default=None, help="model file or run directory (default: the model shipped with pneumolens)"
    )
    c.add_argument("--data", required=True, help="the site's films: NORMAL/ and PNEUMONIA/ folders, or a CSV manifest")
    c.add_argument("--out", required=True, help="the recalibrated model file to write (not the model itself)")
    c.add_argument("--policy", help="threshold policy, e.g. sensitivity:0.97 (default: the model's own)")
    c.add_argument(
        "--temperature",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also refit the temperature (probabilities calibrated at the site)",
    )
    c.add_argument(
        "--confidence",
        type=_probability,
        help="meet the policy's rate with this confidence (e.g. 0.95: by its Clopper-Pearson lower bound)",
    )
    c.add_argument("--min-per-class", type=_positive_int, default=30, help="fewest readable films per class")
    c.add_argument("--json", dest="json_out", help="write the report (old and new operating point) as JSON")

    p = sub.add_parser("predict", help="probability of pneumonia for each image")
    p.add_argument("images", nargs="+", help="JPEG, PNG or DICOM files, or folders (walked recursively)")
    p.add_argument("--csv", help="write one row per file (path, probability, label, flags, error) here")
    p.add_argument(
        "--model", default=None, help="model file or run directory (default: the model shipped with pneumolens)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per image per line")
    x = sub.add_parser("explain", help="explain a prediction (Grad-CAM, LIME or occlusion), or rate the methods")
    x.add_argument("image", nargs="?", help="JPEG or PNG file (omit with --evaluate)")
    x.add_argument(
        "--model", default=None, help="model file or run directory (default: the model shipped with pneumolens)"
    )
    x.add_argument("--method", default="occlusion", help="occlusion (default: the faithful one), gradcam or lime")
    x.add_argument("--out", help="write the picture here (PNG)")
    x.add_argument("--json", action="store_true", help="print a JSON object")
    x.add_argument(
        "--dicom-out",
        metavar="DIR",
        help="for a DICOM IMAGE: write into DIR what `listen --sr --gsps --seg` would send back (the picture, the "
        "Structured Report, the presentation state, the map as a segmentation), to import or view without a node",
    )
    x.add_argument("--layer", help="Grad-CAM layer (default: the model's last feature block)")
    x.add_argument("--samples", type=_positive_int, default=1000, help="LIME perturbation samples")
    x.add_argument("--window", type=_positive_int, help="occlusion window, model-input pixels")
    x.add_argument("--stride", type=_positive_int, help="occlusion stride, model-input pixels")
    x.add_argument("--seed", type=int, default=0, help="LIME's random seed")
    x.add_argument("--evaluate", action="store_true", help="rate every method on --data's test images")
    _data_arg(x, required=False)
    x.add_argument("--n", type=_positive_int, default=20, help="images for --evaluate (stratified)")

    sv = sub.add_parser("serve", help="the decision-support web app and API (FastAPI)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    sv.add_argument("--backend", choices=["torch", "onnx"], default=None)

    en = sub.add_parser("ensemble", help="average trained models (mean logit, or mean weights) into one model file")
    en.add_argument("members", nargs="+", help="model files or run directories (at least 2, one validation split)")
    _data_arg(en)
    en.add_argument(
        "--average-weights",
        action="store_true",
        help="one network whose weights are the members' mean (a model soup): members fine-tuned from one start "
        "(train --init MODEL); it costs one network at inference",
    )
    en.add_argument("--out", required=True, help="run directory for model.safetensors and val_metrics.json")

    ex = sub.add_parser("export", help="export a model to ONNX")
    ex.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    ex.add_argument("--format", choices=["onnx"], default="onnx")
    ex.add_argument("--out", required=True, help="output file, e.g. model.onnx")

    pl = sub.add_parser(
        "pull",
        help="ask a PACS (C-FIND) for the CR/DX studies of some dates and have it send them (C-MOVE) to the node",
    )
    pl.add_argument("--pacs", required=True, help="the PACS's Query/Retrieve SCP: AE_TITLE@host:port")
    pl.add_argument(
        "--to",
        default="PNEUMOLENS",
        help="move destination: the AE title of a running `pneumolens listen` (the PACS must know its address)",
    )
    pl.add_argument(
        "--get",
        metavar="DIR",
        help="instead of a move, get the images over our own association (C-GET) into DIR, each as received "
        "(SOP_INSTANCE_UID.dcm; they hold patient data): no move destination needed",
    )
    pl.add_argument("--since", help="first study date, YYYY-MM-DD")
    pl.add_argument("--until", help="last study date, YYYY-MM-DD (inclusive)")
    pl.add_argument("--study", action="append", metavar="UID", help="a Study Instance UID (repeatable)")
    pl.add_argument(
        "--modality", action="append", metavar="M", help="series modality to move (repeatable; default CR and DX)"
    )
    pl.add_argument("--limit", type=int, default=200, help="refuse, moving nothing, when more studies match")
    pl.add_argument("--dry-run", action="store_true", help="say what would be moved; move nothing")
    pl.add_argument("--ae-title", default="PNEUMOLENS", help="our calling AE title (the PACS may allow only some)")
    _tls_flags(pl, "--tls", "TLS to the PACS: our PEM certificate (with --tls-key and --tls-ca)", "the PACS's")

    cp = sub.add_parser(
        "compare", help="is model B better than model A on these films? paired differences with patient intervals"
    )
    cp.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="A and B (model files or run directories); B alone: A is the shipped model",
    )
    cp.add_argument("--data", required=True, help="a dataset root (its test split), class folders, or a CSV manifest")
    cp.add_argument("--threshold-a", type=float, help="A's operating point (default: the one stored in A)")
    cp.add_argument("--threshold-b", type=float, help="B's operating point (default: the one stored in B)")
    cp.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    cp.add_argument("--json", dest="json_out", help="also write the comparison as JSON")

    s = sub.add_parser("segment", help="lung masks, overlays and plausibility flags for each image")
    s.add_argument("images", nargs="+", help="JPEG or PNG files")
    s.add_argument("--out-dir", default="segmentations", help="where <stem>_mask.png and <stem>_overlay.png go")
    s.add_argument("--json", action="store_true", help="one JSON object per image per line")
    s.add_argument("--segmenter", help="a lung model file (default: the one shipped with pneumolens)")

    ln = sub.add_parser("listen", help="DICOM node: give every incoming CR/DX image a first read (C-STORE SCP)")
    ln.add_argument("--ae-title", default="PNEUMOLENS")
    ln.add_argument("--port", type=int, default=11112)
    ln.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    ln.add_argument("--out", default="dicom-results", help="where the results (DICOM files) are written")
    ln.add_argument("--forward", help="also send each result to AE_TITLE@host:port (C-STORE)")
    ln.add_argument(
        "--sr", action="store_true", help="also write (and forward) a DICOM Structured Report (TID 1500) per image"
    )
    ln.add_argument(
        "--keep",
        metavar="DIR",
        help="also store each image read, as received, in DIR (SOP_INSTANCE_UID.dcm): for a site's own evaluation; "
        "the files hold patient data",
    )
    ln.add_argument(
        "--retain-days",
        type=_positive_int,
        metavar="DAYS",
        help="delete the node's results (--out) and kept originals (--keep) older than DAYS, at start and hourly "
        "(only files the node names by UID); default: keep everything",
    )
    ln.add_argument(
        "--gsps",
        action="store_true",
        help="also write (and forward) a Grayscale Softcopy Presentation State per image: the map's outline and "
        "the call as an overlay a viewer draws on the original",
    )
    ln.add_argument(
        "--seg",
        action="store_true",
        help="also write (and forward) the map as a DICOM Segmentation (fractional) per image: its graded values "
        "on the original's pixels",
    )
    ln.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    ln.add_argument("--db", help="audit database, a SQLAlchemy URL (default: $PNEUMOLENS_AUDIT_URL or SQLite)")
    ln.add_argument(
        "--allow-aet", action="append", metavar="AET", help="accept associations only from this calling AE (repeatable)"
    )
    _tls_flags(
        ln,
        "--tls",
        "TLS: this node's PEM certificate (with --tls-key)",
        "",
        "require peer certificates signed by this PEM CA (mutual TLS)",
    )
    ln.add_argument(
        "--forward-tls",
        action="store_true",
        help="forward over TLS, as a client with --forward-tls-cert/--forward-tls-key (default: --tls-cert/--tls-key), "
        "checking the destination with --forward-tls-ca (default: --tls-ca)",
    )
    _tls_flags(ln, "--forward-tls", "TLS to the destination: the node's PEM client certificate", "the destination's")

    w = sub.add_parser("watch", help="score each JPEG / PNG / DICOM file that appears in a folder, once")
    w.add_argument("folder")
    w.add_argument("--out", help="where <file>.json results go (default: FOLDER/pneumolens-results)")
    w.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    w.add_argument("--db", help="audit database, a SQLAlchemy URL (default: $PNEUMOLENS_AUDIT_URL or SQLite)")
    w.add_argument("--poll", type=float, default=1.0, help="seconds between scans of the folder")
    w.add_argument("--explain", action="store_true", help="add a Grad-CAM picture (base64 PNG) to each result")
    w.add_argument("--once", action="store_true", help="process what is there now and exit")

    rv = sub.add_parser(
        "review",
        help="record a clinician's read of an image or study the audit trail holds a prediction for "
        "(`audit --agreement` compares the model's calls with these reads)",
    )
    rv.add_argument("image", nargs="?", help="the image file that was read (identified by its SHA-256)")
    rv.add_argument("--sha256", help="or the image's SHA-256, as `audit` lists it")
    rv.add_argument("--study", help="or the Study Instance UID of a DICOM study (stored salted and hashed)")
    rv.add_argument("--label", required=True, choices=("NORMAL", "PNEUMONIA"), help="the clinician's read")
    rv.add_argument("--db", help="audit database, a SQLAlchemy URL (default: $PNEUMOLENS_AUDIT_URL or SQLite)")

    a = sub.add_parser("audit", help="list the audit trail of predictions (no patient identifiers are stored)")
    a.add_argument("--since", help="ISO date/time (UTC) or an age: 30m, 12h, 7d")
    a.add_argument("--csv", action="store_true", help="CSV on stdout")
    a.add_argument("--db", help="audit database, a SQLAlchemy URL (default: $PNEUMOLENS_AUDIT_URL or SQLite)")
    act = a.add_mutually_exclusive_group()
    act.add_argument("--verify", action="store_true", help="check the hash chain; exit status 1 if it is broken")
    act.add_argument(
        "--prune-before",
        metavar="WHEN",
        help="retention: remove the rows older than WHEN (ISO date/time or an age such as 365d); the prune is recorded",
    )
    act.add_argument(
        "--drift",
        metavar="WHEN",
        help="compare the predictions since WHEN (ISO date/time or an age such as 7d) with those before it (from "
        "--since on): refusals, calls, probabilities, flags and the films' measures; exit status 1 on drift, 2 if "
        "too few to compare",
    )
    act.add_argument(
        "--agreement",
        action="store_true",
        help="the model's calls against the clinicians' reads recorded with `pneumolens review` (reviews dated from "
        "--since on)",
    )
    a.add_argument("--alpha", type=float, default=0.01, help="--drift: family-wise significance level (Bonferroni)")
    for rate in ("sensitivity", "specificity"):
        a.add_argument(
            f"--min-{rate}",
            type=_fraction,
            metavar="F",
            help=f"--agreement: exit status 1 (and --notify's alert) when a model's {rate} against the reads is "
            f"credibly below F (0-1): the upper end of its Wilson 95%% interval under it",
        )
    a.add_argument("--device", help="--drift: only the inputs from this DICOM device (make and model, as listed)")
    a.add_argument(
        "--notify",
        metavar="URL",
        help="--drift, --agreement with a floor: on drift or a rate below its floor, also POST the alert as JSON to "
        "this webhook (a one-line 'text', the whole 'report')",
    )

    tl = sub.add_parser("train-lungs", help="train the lung segmenter from scratch on NLM lung masks")
    tl.add_argument("--data", default="../shared/data/lung_masks", help="folder with manifest.csv, images/, masks/")
    tl.add_argument("--out", default="runs/lungs")
    tl.add_argument("--epochs", type=_positive_int)
    tl.add_argument("--image-size", type=_positive_int)
    tl.add_argument("--max-minutes", type=float, help="stop training after this many minutes")
    tl.add_argument("--seed", type=int)
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
    to.add_argument("--epochs", type=_positive_int)
    to.add_argument("--image-size", type=_positive_int, help="input side in pixels (96 by default)")
    to.add_argument("--limit", type=_positive_int, help="at most N Kaggle films (smoke runs)")
    to.add_argument(
        "--borders", type=_probability, help="black bands on each side of training films with this probability"
    )
    to.add_argument("--seed", type=int)
    return parser


def cmd_explain(args: argparse.Namespace) -> int:
    from pneumolens.checkpoint import load_model
    from pneumolens.explain import explain_image

    options = {"layer": args.layer, "n_samples": args.samples, "window": args.window, "stride": args.stride}
    if args.evaluate:
        from pneumolens.explain.evaluate import evaluate_methods, format_table

        if not args.data:
            raise ValueError("--evaluate needs --data")
        results = evaluate_methods(load_model(args.model), args.data, n=args.n, seed=args.seed, **options)
        print(json.dumps(results, indent=2) if args.json else format_table(results))
        return 0
    if not args.image:
        raise ValueError("give an IMAGE to explain, or --evaluate with --data")
    own = (
        ("--layer", args.layer, "gradcam"),
        ("--window", args.window, "occlusion"),
        ("--stride", args.stride, "occlusion"),
    )
    for flag, value, method in own:
        if value is not None and args.method != method:  # said, rather than ignored
            raise ValueError(f"{flag} applies to --method {method} only, not {args.method}")
    if args.dicom_out:  # the node's engine loads the model itself
        return _dicom_objects(args)
    e = explain_image(load_model(args.model), args.image, args.method, seed=args.seed, **options)
    if args.out:
        from pneumolens.explain.render import explanation_image

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        explanation_image(e).save(args.out)
    record = e.to_dict()
    if args.out:
        record["out"] = args.out
    if args.json:
        print(json.dumps(record))
    else:
        print(f"{e.path}\t{e.method}\t{e.label}\tP(pneumonia)={e.probability:.4f}\t{e.seconds:.2f}s")
        print(NOTICE, file=sys.stderr)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from pneumolens.data.images import ImageReadError, read_image
    from pneumolens.lungs.flags import describe, lung_fraction, plausibility_flags
    from pneumolens.lungs.render import mask_image, overlay_image
    from pneumolens.lungs.segment import LungSegmenter

    seg = LungSegmenter.from_file(args.segmenter) if args.segmenter else LungSegmenter.shipped()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.images:
        try:
            gray = read_image(path)
        except ImageReadError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
            if args.json:
                print(json.dumps({"path": path, "error": e.reason}))
            continue
        low, full = seg.masks(gray)
        stem = Path(path).stem
        mask_png, overlay_png = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
        mask_image(full).save(mask_png)
        overlay_image(gray, full).save(overlay_png)
        flags = plausibility_flags(low, gray)
        record = {
            "path": path,
            "lung_fraction": round(lung_fraction(full), 4),
            "flags": flags,
            "mask": str(mask_png),
            "overlay": str(overlay_png),
        }
        if args.json:
            print(json.dumps(record))
        else:
            note = describe(flags) or "ok"
            print(f"{path}\tlung_fraction={record['lung_fraction']:.3f}\t{note}")
    return 1 if failed else 0


def _given(cfg: Any, args: argparse.Namespace, *names: str) -> Any:
    """``cfg`` (a frozen dataclass) with the options in ``names`` that were given on the command line."""
    import dataclasses

    return dataclasses.replace(cfg, **{n: getattr(args, n) for n in names if getattr(args, n) is not None})


def cmd_train_orientation(args: argparse.Namespace) -> int:
    from pneumolens.lungs.train_orientation import OrientationConfig, fit_orientation

    cfg = _given(OrientationConfig(), args, "transform", "epochs", "image_size", "limit", "seed", "borders")
    print(fit_orientation(args.data, args.lung_masks, args.out, cfg))
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
    "exposure_balance ssl_epochs ssl_lr init exclude val_fraction refit threshold_policy calibrate precision"
).split()


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The config that ``pneumolens train`` with these parsed arguments trains."""
    from pneumolens.config import resolve_config

    return resolve_config(
        args.preset,
        **{k: getattr(args, k) for k in RECIPE_FLAGS},
        num_workers=args.num_workers,
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        cache=args.cache,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from pneumolens.config import TrainConfig
    from pneumolens.training.fit import fit
    from pneumolens.training.state import TrainingDiverged, TrainingInterrupted

    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in RECIPE_FLAGS if getattr(args, k) is not None]
        if given or args.preset != "default" or args.out:
            raise ValueError(f"--resume continues the run's own recipe; drop {', '.join(given) or '--preset/--out'}")
        run = Path(args.resume)
        try:
            cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
            data = args.data or json.loads((run / "run.json").read_text())["data"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{run}: not a resumable run directory ({e})") from None
        out, resume = str(run), True
    else:
        if not args.data:
            raise ValueError(f"--data is required (or set ${DEFAULT_DATA_ENV})")
        cfg = train_config(args)
        data, out, resume = args.data, args.out or f"runs/{cfg.preset}", False
    try:
        path = fit(data, cfg, out, cache_dir=args.cache_dir, resume=resume)
    except TrainingInterrupted as e:
        print(f"pneumolens: {e}", file=sys.stderr)
        return 143 if e.signal_name == "SIGTERM" else 130
    except TrainingDiverged as e:
        print(f"pneumolens: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pneumolens.checkpoint import load_model
    from pneumolens.evaluation.evaluate import evaluate, format_table

    loaded = load_model(args.model)
    ev = evaluate(loaded, args.data, args.threshold, group_by=args.group_by)
    print(format_table(ev.metrics))
    for path, reason in ev.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if args.report:
        from pneumolens.evaluation.report import write_report

        explanations = None
        if args.explain != "none":
            from pneumolens.evaluation.error_explanations import explain_errors

            Path(args.report).mkdir(parents=True, exist_ok=True)
            explanations = explain_errors(loaded, ev, args.explain, Path(args.report) / "errors_explained.png")
            ev.metrics["explanations"] = explanations
        title = f"pneumolens evaluation: {loaded.meta.get('name')}"
        html = write_report(ev, loaded.meta, args.report, title=title, explanations=explanations)
        print(f"report: {html}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(ev.metrics, indent=2))
    if args.csv:
        from pneumolens.evaluation.films import write_films_csv

        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        write_films_csv(ev, args.csv)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pneumolens.checkpoint import load_model
    from pneumolens.evaluation.compare import compare, format_comparison

    if len(args.models) > 2:
        raise ValueError(f"compare takes one or two models, got {len(args.models)}: A B, or B against the shipped A")
    for flag, t in (("--threshold-a", args.threshold_a), ("--threshold-b", args.threshold_b)):
        if t is not None and not 0 < t < 1:
            raise ValueError(f"{flag} {t}: an operating point lies between 0 and 1")
    if args.n_boot < 100:
        raise ValueError(f"--n-boot {args.n_boot}: at least 100 resamples")
    a, b = (load_model(None), load_model(args.models[0])) if len(args.models) == 1 else map(load_model, args.models)
    c = compare(a, b, args.data, (args.threshold_a, args.threshold_b), n_boot=args.n_boot)
    print(format_comparison(c))
    for skipped in c["skipped"]:
        print(f"skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(c, indent=2))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pneumolens.checkpoint import load_model, save_model
    from pneumolens.evaluation.recalibrate import format_report, recalibrate

    loaded = load_model(args.model)
    out = Path(args.out)
    if out.is_dir() or out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: give a new .safetensors file")
    if out.resolve() == loaded.path.resolve():
        raise ValueError(f"--out {out}: is the model being recalibrated; write the new one beside it")
    r = recalibrate(loaded, args.data, args.policy, args.temperature, args.min_per_class, args.confidence)
    for path, reason in r.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(format_report(r.report))
    save_model(out, r.model, r.meta)
    print(f"model: {out}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(r.report, indent=2))
    return 0


def _expand(paths: list[str]) -> list[str]:
    """Files as given, folders walked recursively for JPEG / PNG / DICOM files (sorted)."""
    from pneumolens.data.sources import image_files

    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(str(f) for f in image_files(p))  # broken or looping links included: each gets its error
        else:
            out.append(str(p))
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from pneumolens.inference import Predictor
    from pneumolens.lungs.flags import MEASURES

    predictor = Predictor.from_checkpoint(args.model)
    paths = _expand(args.images)
    if not paths:
        raise ValueError(f"no JPEG, PNG or DICOM files in {', '.join(args.images)}")
    preds = predictor.predict_paths(paths, progress=bool(args.csv))
    failed = 0
    for pred in preds:
        if pred.error:
            failed += 1
            print(f"error: {pred.path}: {pred.error}", file=sys.stderr)
        if args.csv:
            continue
        if args.json:
            print(json.dumps(pred.to_dict()))
        elif not pred.error:
            note = f"\tWARNING: {pred.warning}" if pred.warning else ""
            print(f"{pred.path}\t{pred.probability:.4f}\t{pred.label}{note}")
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
            w = csv.writer(f)
            w.writerow(["path", "probability", "label", "flags", *MEASURES, "error"])
            for pred in preds:
                prob = "" if pred.probability is None else f"{pred.probability:.6f}"
                values = [pred.measures.get(m) for m in MEASURES]
                measured = ["" if v is None else f"{v:.6g}" for v in values]
                w.writerow([pred.path, prob, pred.label or "", " ".join(pred.flags), *measured, pred.error or ""])
        print(f"{len(preds) - failed} predicted, {failed} failed: {args.csv}")
        return 0  # a bad file is a row, not a failed run
    if not args.json:
        print(NOTICE, file=sys.stderr)
    return 1 if failed else 0


def _dicom_objects(args: argparse.Namespace) -> int:
    """``explain IMAGE.dcm --dicom-out DIR``: the node's objects for one DICOM file on disk."""
    import pydicom
    from pydicom.uid import generate_uid

    from pneumolens.checkpoint import atomic_write
    from pneumolens.data.dicom import is_dicom
    from pneumolens.data.images import read_image
    from pneumolens.dicom_node import result_objects

    path = Path(args.image)
    if not path.is_file():
        raise FileNotFoundError(f"{args.image}: no such file")
    with path.open("rb") as f:
        if not is_dicom(f.read(132), path.name):
            raise ValueError(f"--dicom-out needs a DICOM file; {args.image} is not one")
    for flag, value in (("--layer", args.layer), ("--window", args.window), ("--stride", args.stride)):
        if value is not None:
            raise ValueError(f"--dicom-out writes what the node writes, with its map settings: drop {flag}")
    result = _engine(args.model).analyse(read_image(path), explain=True, method=args.method)
    series: dict[str, str] = {}
    made = result_objects(
        pydicom.dcmread(path),
        result,
        lambda study, modality="OT": series.setdefault(modality, generate_uid()),
        sr=True,
        gsps=True,
        seg=True,
    )
    out = Path(args.dicom_out)
    out.mkdir(parents=True, exist_ok=True)
    for ds in made:
        target = out / f"{ds.SOPInstanceUID}.dcm"
        atomic_write(target, lambda tmp, ds=ds: ds.save_as(tmp, enforce_file_format=True))
        print(f"{target}\t{ds.Modality}")
    print(NOTICE, file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pneumolens.service.app import create_app
    from pneumolens.service.settings import Settings

    overrides = {k: v for k, v in {"model": args.model, "backend": args.backend}.items() if v is not None}
    print(NOTICE, file=sys.stderr)
    uvicorn.run(create_app(Settings(**overrides)), host=args.host, port=args.port, log_level="info")
    return 0


def _engine(model: str | None):
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    return Engine(Settings(**({"model": model} if model else {})))


def cmd_listen(args: argparse.Namespace) -> int:
    import signal
    import threading

    from pneumolens.audit import AuditLog
    from pneumolens.dicom_node import Destination, Node, tls_context

    forward = Destination.parse(args.forward) if args.forward else None
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_ca and not args.tls_cert):
        raise ValueError("TLS needs --tls-cert and --tls-key together (and both for --tls-ca)")
    tls = tls_context(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    own = (args.forward_tls_cert, args.forward_tls_key, args.forward_tls_ca)
    if any(own) and not args.forward_tls:
        raise ValueError("--forward-tls-cert, --forward-tls-key and --forward-tls-ca need --forward-tls")
    if args.forward_tls:
        if forward is None:
            raise ValueError("--forward-tls needs --forward AET@host:port")
        # the destination's own certificates where given (another PKI than the modalities'), else the node's
        mine = bool(own[0] or own[1])
        cert, key = (own[0], own[1]) if mine else (args.tls_cert, args.tls_key)
        if not (cert and key):
            raise ValueError(
                "--forward-tls needs a client certificate and key: --forward-tls-cert and --forward-tls-key together, "
                "or the node's --tls-cert and --tls-key"
            )
        ca = own[2] or args.tls_ca
        if ca is None:
            raise ValueError("--forward-tls needs --forward-tls-ca (or --tls-ca): the CA that signed the destination")
        names = ("--forward-tls-cert", "--forward-tls-key") if mine else ("--tls-cert", "--tls-key")
        forward.tls = tls_context(cert, key, ca, False, (*names, "--forward-tls-ca" if own[2] else "--tls-ca"))
    allowed = tuple(args.allow_aet or ())
    if any(not 0 < len(a.strip()) <= 16 for a in allowed):
        raise ValueError(f"--allow-aet {allowed}: an AE title has 1 to 16 characters")
    engine = _engine(args.model)
    node = Node(
        engine,
        AuditLog(args.db),
        Path(args.out),
        args.ae_title,
        forward,
        allowed_aets=allowed,
        tls=tls,
        sr=args.sr,
        gsps=args.gsps,
        seg=args.seg,
        keep=Path(args.keep) if args.keep else None,
        retain_days=args.retain_days,
    )
    print(NOTICE, file=sys.stderr)
    who = f"from {', '.join(allowed)} only" if allowed else "from any AE title"

    def ready() -> None:
        transport = "TLS" if tls else "plain TCP"
        where = f"{args.host}:{args.port} ({transport}, {who}); results in {args.out}"
        print(f"listening as {args.ae_title} on {where}", file=sys.stderr)

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        node.run(args.host, args.port, stop, on_ready=ready)
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise ValueError(f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror or e})") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(
        f"stored {node.stored} result(s), refused {node.refused} image(s), rejected {node.rejected} association(s)",
        file=sys.stderr,
    )
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from pneumolens.audit import AuditLog
    from pneumolens.watch import Watcher

    folder = Path(args.folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    watcher = Watcher(folder, Path(args.out or folder / "pneumolens-results"), _engine(args.model), AuditLog(args.db))
    watcher.explain = args.explain
    print(NOTICE, file=sys.stderr)
    if args.once:
        n = watcher.poll_once(settle=False)
        print(f"processed {n} new file(s)", file=sys.stderr)
    else:
        watcher.run(args.poll)
        print(f"processed {watcher.processed} file(s)", file=sys.stderr)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from pneumolens.audit import AuditLog, format_table, parse_since, write_csv

    audit = AuditLog(args.db)
    if args.verify:
        report = audit.verify()
        print(report)
        return 0 if report.problem is None else 1
    if args.prune_before:
        before = parse_since(args.prune_before, "--prune-before")
        removed = audit.prune(before)
        note = "; the removal is recorded in the trail" if removed else ""
        print(f"removed {removed} row(s) dated before {before.isoformat(timespec='seconds')}{note}")
        return 0
    since = parse_since(args.since) if args.since else None
    if args.device and not args.drift:
        raise ValueError("--device chooses the inputs of --drift; give --drift too")
    if args.notify and not (args.drift or args.agreement):
        raise ValueError("--notify sends the alert of --drift or --agreement; give one of them too")
    floors = {k: v for k, v in (("sensitivity", args.min_sensitivity), ("specificity", args.min_specificity)) if v}
    if floors and not args.agreement:
        raise ValueError("--min-sensitivity and --min-specificity are floors for --agreement; give --agreement too")
    if args.agreement:
        return _agreement(audit, since, floors, args.notify)
    if args.drift:
        from pneumolens.alert import check_url, notify, where
        from pneumolens.monitor import drift_in

        if args.notify:
            check_url(args.notify)
        report = drift_in(audit, parse_since(args.drift, "--drift"), since, args.alpha, args.device)  # too few: exit 2
        print(report)
        if report.drift and args.notify:
            try:
                attempts = notify(args.notify, report, args.device)
                print(f"alert sent to {where(args.notify)}" + (f" (attempt {attempts})" if attempts > 1 else ""))
            except ConnectionError as e:  # the drift still sets the exit status
                print(f"pneumolens audit: {e}", file=sys.stderr)
        return 1 if report.drift else 0
    rows = audit.rows(since=since)
    if args.csv:
        write_csv(rows, sys.stdout)
    else:
        print(format_table(rows))
        print(f"{len(rows)} row(s)", file=sys.stderr)
    return 0


def _agreement(audit, since, floors: dict[str, float], url: str | None) -> int:
    """``audit --agreement``: the table; with floors, exit status 1 (and the alert to ``url``) when a
    rate is credibly below its floor."""
    from pneumolens.agreement import agreement_in, below_floors

    if url:
        from pneumolens.alert import check_url

        check_url(url)
    found = agreement_in(audit, since)
    print(found)
    low = below_floors(found.table(), floors)
    for line in low:
        print(f"BELOW FLOOR: {line}")
    if low and url:
        import socket

        from pneumolens.alert import send, where

        text = (
            f"pneumolens agreement alert on {socket.gethostname()}: " + "; ".join(low) + " (against the readers' reads)"
        )
        try:
            attempts = send(url, text, {"models": found.table(), "below_floor": low, "unmatched": found.unmatched})
            print(f"alert sent to {where(url)}" + (f" (attempt {attempts})" if attempts > 1 else ""))
        except ConnectionError as e:  # the shortfall still sets the exit status
            print(f"pneumolens audit: {e}", file=sys.stderr)
    return 1 if low else 0


def cmd_review(args: argparse.Namespace) -> int:
    from pneumolens.audit import AuditLog, sha256_bytes

    if sum(x is not None for x in (args.image, args.sha256, args.study)) != 1:
        raise ValueError("name what was read: an IMAGE file, --sha256 HEX or --study UID (one of them)")
    digest = args.sha256
    if args.image is not None:
        path = Path(args.image)
        if not path.is_file():
            raise FileNotFoundError(f"{args.image}: no such file")
        digest = sha256_bytes(path.read_bytes())
    if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"--sha256 {digest!r}: give the 64 hex digits the audit trail lists")
    try:
        found = AuditLog(args.db).review(args.label, input_sha256=digest, study_uid=args.study)
    except LookupError as e:
        print(f"pneumolens review: {e}", file=sys.stderr)
        return 1
    verdict = "agrees with" if found["decision"] == args.label else "differs from"
    print(
        f"recorded: the read {args.label} {verdict} the model's call {found['decision']} "
        f"(p={found['probability']:.3f}, {found['time']}, model {str(found['model_sha256'])[:12]})"
    )
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from pneumolens.training.ensemble import build_ensemble

    print(build_ensemble(args.members, args.data, args.out, average_weights=args.average_weights))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pneumolens.checkpoint import load_model
    from pneumolens.export import export_onnx

    print(export_onnx(load_model(args.model), args.out))
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from pneumolens.dicom_node import Destination, tls_context
    from pneumolens.dicom_pull import MODALITIES, Pacs, date_range, pull_studies

    pacs = Destination.parse(args.pacs, "--pacs")
    dates = date_range(args.since, args.until)
    if not dates and not args.study:
        raise ValueError("say which studies: --since, --until or --study (pull never asks a PACS for all it holds)")
    if args.limit < 1:
        raise ValueError(f"--limit {args.limit}: must be at least 1")
    if args.tls_cert or args.tls_key or args.tls_ca:
        if not (args.tls_cert and args.tls_key and args.tls_ca):
            raise ValueError("TLS to the PACS needs --tls-cert, --tls-key and --tls-ca together")
    tls = tls_context(args.tls_cert, args.tls_key, args.tls_ca, server=False) if args.tls_cert else None
    modalities = tuple(dict.fromkeys(m.upper() for m in (args.modality or MODALITIES)))
    get_into = Path(args.get) if args.get else None
    if get_into is not None and not args.dry_run:
        get_into.mkdir(parents=True, exist_ok=True)
    with Pacs(pacs, args.ae_title, tls, get_into=get_into) as q:
        studies = sorted(q.studies(dates, args.study or ()), key=lambda study: study.date)
        if len(studies) > args.limit:
            raise ValueError(
                f"{len(studies)} studies match, more than --limit {args.limit}: nothing was moved; "
                "narrow the dates or raise the limit"
            )
        kinds = " or ".join(modalities)
        if args.dry_run:
            doing = "dry run, nothing is moved"
        elif args.get:
            doing = f"getting their {kinds} series into {args.get}"
        else:
            doing = f"moving their {kinds} series to {args.to}"
        print(f"{len(studies)} studies match at {pacs.ae_title}; {doing}")
        problems = pull_studies(q, studies, modalities, print, destination=args.to, dry_run=args.dry_run)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    from pneumolens.checkpoint import ModelFileError
    from pneumolens.data.images import ImageReadError
    from pneumolens.data.sources import DataLayoutError

    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 must not end the run
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    commands = {
        "train": cmd_train,
        "train-lungs": cmd_train_lungs,
        "train-orientation": cmd_train_orientation,
        "segment": cmd_segment,
        "explain": cmd_explain,
        "serve": cmd_serve,
        "export": cmd_export,
        "ensemble": cmd_ensemble,
        "evaluate": cmd_evaluate,
        "calibrate": cmd_calibrate,
        "compare": cmd_compare,
        "predict": cmd_predict,
        "listen": cmd_listen,
        "pull": cmd_pull,
        "watch": cmd_watch,
        "audit": cmd_audit,
        "review": cmd_review,
    }
    try:
        return commands[args.command](args)
    except (DataLayoutError, ModelFileError, ImageReadError, ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"pneumolens {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
