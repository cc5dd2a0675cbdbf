"""Run configuration: frozen dataclasses, presets, and CLI overrides.

A run is fully described by one :class:`TrainConfig`; it is written beside the run as JSON and
stored inside the model file, so a model always carries the recipe and preprocessing it was made with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ClassWeighting = Literal["seed", "balanced", "none"]
CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")  # index 1 is the positive class


@dataclass(frozen=True)
class PreprocessConfig:
    """How a file becomes a model input. Travels with the weights.

    Pixel contract: every input is a float32 tensor (C, H, W) with values in [0, 1], where
    0 is black; grayscale is replicated when ``channels`` is 3.
    """

    image_size: int = 224
    channels: int = 1
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    lungs: Literal["none", "crop", "mask", "soft", "crop_soft"] = "none"  # lung-aware suppression (pneumolens.lungs)
    lung_margin: float = 0.05  # mask dilation, as a fraction of the image's shorter side
    soft_floor: float = 0.3  # what "soft" and "crop_soft" keep of the intensity outside the lungs
    equalize: Literal["none", "clahe"] = "none"  # contrast-limited adaptive histogram equalisation
    clahe_clip: float = 0.01  # CLAHE clip limit (skimage's, in (0, 1]; higher: stronger local contrast)
    lung_gamma: float = 0.0  # > 0: a gamma bringing the lungs' median to this value (needs a lungs mode)


@dataclass(frozen=True)
class AugmentConfig:
    """Random affine augmentation with Keras ImageDataGenerator semantics (train only)."""

    rotation: float = 10.0  # degrees, uniform in [-r, r]
    shift: float = 0.1  # fraction of width/height, uniform in [-s, s], independent per axis
    zoom: float = 0.1  # scale uniform in [1-z, 1+z], independent per axis
    gamma: float = 0.0  # intensity: x ** g with log g uniform in [-log(1+gamma), log(1+gamma)]
    contrast: float = 0.0  # intensity: (x - mean) * c + mean, c uniform in [1-contrast, 1+contrast]
    mixup: float = 0.0  # > 0: mix each image and label with another of the batch, weight ~ Beta(mixup, mixup)
    hflip: float = 0.0  # probability of mirroring an image left-right
    erase: float = 0.0  # probability of filling one random rectangle (2-20% of the image) with the image's mean
    blur: float = 0.0  # Gaussian blur, sigma uniform in [0, blur] pixels of the model input, one draw per image
    bias_field: float = 0.0  # x * exp(s * ramp): s uniform in [-b, b], a ramp from -1 to 1 in a random direction


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "default"
    model: str = "resnet_small"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optimizer: Literal["rmsprop", "adamw", "sgd"] = "adamw"  # sgd: momentum 0.9, Nesterov
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: Literal["plateau", "cosine"] = "plateau"
    warmup_epochs: int = 0  # linear learning-rate warm-up before the schedule (cosine only)
    ema_decay: float = 0.0  # > 0: validate, select and ship an exponential moving average of the weights
    ema_warmup: bool = False  # the average's decay ramps up over the first updates: min(d, (1 + n) / (10 + n))
    epochs: int = 30
    batch_size: int = 32
    patience: int = 3  # early stopping on val_loss, best weights kept
    # early stopping watches val_loss from this epoch on (Keras' start_from_epoch); negative counts from
    # the end: -1 keeps the last epoch's weights whatever ``epochs`` is
    start_from_epoch: int = 0
    class_weights: ClassWeighting = "seed"
    label_smoothing: float = 0.0  # training targets y * (1 - e) + e / 2
    teacher: str | None = None  # a trained model (same patient split) whose probabilities the network also learns
    distill_weight: float = 0.0  # weight of the teacher's probabilities against the labels' loss
    rank_weight: float = 0.0  # > 0: a pairwise ranking loss (RankNet) on the batch's positive-negative pairs
    group_dro: float = 0.0  # > 0: group DRO's step size over the file-name groups (training.group_dro)
    sam_rho: float = 0.0  # > 0: sharpness-aware minimisation, gradients taken rho away along the gradient
    subtype_weight: float = 0.0  # > 0: auxiliary bacterial-vs-viral loss (Kaggle file names), training only
    series_adversary: float = 0.0  # > 0: weight of an adversary against the normal series (training.adversary)
    balanced_sampler: bool = False
    patient_weighting: bool = False  # within each class, a patient's films share one patient's weight
    exposure_balance: float = 0.0  # > 0: weight films so lung exposure does not predict the label (training.exposure)
    ssl_epochs: int = 0  # > 0: self-supervised pretraining (SimSiam) on the training films first
    ssl_batch_size: int = 128
    ssl_lr: float = 0.05  # SGD, per 256 films (scaled to the batch)
    init: str | None = None  # a backbone file (features) or a trained model (every weight) to start from
    exclude: str | None = None  # a list of training files to leave out (names or paths; validation stays whole)
    val_fraction: float = 0.15
    seed: int = 42
    split_seed: int | None = None  # the patient split's seed; None: ``seed`` (fix it to train an ensemble)
    limit: int | None = None
    num_workers: int = 2
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning strategy: auto, ddp, ddp_spawn, ...
    precision: str = "auto"  # auto: bf16-mixed where the CPU/GPU has native bf16, else 32-true
    cache: bool = True  # train from the preprocessing cache (pneumolens.data.cache)
    threshold: float = 0.5  # used during training (accuracy logs); the stored one follows the policy
    threshold_policy: str = "fixed:0.5"  # fixed:T | sensitivity:S | specificity:S | youden, on validation
    calibrate: bool = False  # temperature scaling fitted on validation, folded into the last layer
    # the ``borderline`` band holds this share of the validation films, those nearest the threshold,
    # or with ``borderline_risk`` it is the narrowest band outside which their calls are wrong at most
    # that share of the time (evaluation.selective.band_for_risk); with ``borderline_confidence``, the
    # Clopper-Pearson upper bound of that share at this confidence is at most ``borderline_risk``
    borderline_share: float = 0.10
    borderline_risk: float | None = None
    borderline_confidence: float | None = None
    # then train again on every training film, validation films too, and give that model the held-out
    # run's temperature and threshold (the held-out run is kept in OUT/holdout; round 27 of the log)
    refit: bool = False

    @property
    def patient_split_seed(self) -> int:
        """The seed that draws the patient split (and the folds of its training part)."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def first_watched_epoch(self) -> int:
        """``start_from_epoch`` counted from the start (a negative one counts from the end)."""
        return self.start_from_epoch if self.start_from_epoch >= 0 else self.epochs + self.start_from_epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def is_recorded_in(self, recorded: dict[str, Any]) -> bool:
        """Whether ``recorded`` (a run's ``config.json``) holds this config, any field added since it was
        written taken at its default (which does what runs did before the field existed)."""
        try:
            theirs = TrainConfig.from_dict(recorded)
        except (TypeError, ValueError):
            return False
        return json.loads(theirs.to_json()) == json.loads(self.to_json())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["preprocess"] = PreprocessConfig(**d.get("preprocess", {}))
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**d)


# The seed's network and recipe, as its author's Keras code has it.
SEED = TrainConfig(
    preset="seed",
    model="seed_cnn",
    preprocess=PreprocessConfig(image_size=64, channels=3, interpolation="nearest"),
    augment=AugmentConfig(rotation=10.0, shift=0.2, zoom=0.1),
    optimizer="rmsprop",
    lr=1e-3,
    scheduler="plateau",
    epochs=30,
    batch_size=32,
    patience=3,
    class_weights="seed",
    precision="32-true",  # Keras computes in float32; bf16 lowered this recipe's test accuracy on 3 of 3 seeds
)

# The recipe of the model shipped from round 5 to round 25: residual CNN with batch norm on 1-channel
# 128 px input, cropped to the lung fields and CLAHE-equalised, AdamW with a one-epoch warm-up and
# cosine decay, an exponential moving average of the weights (decay 0.99), an auxiliary
# bacterial-vs-viral loss during training, calibrated, and the threshold set for 97% sensitivity on
# validation; the lowest-validation-loss epoch kept, with early stopping. Seed 1 on the seed-42 patient
# split (the best validated of eleven draws, docs/results.md rounds 5-6). Until round 26 this was
# ``default``: read ``--preset default`` in rounds 1-25 of the log as ``--preset crop_clahe``.
CROP_CLAHE = TrainConfig(
    preset="crop_clahe",
    model="resnet_small",
    preprocess=PreprocessConfig(image_size=128, channels=1, interpolation="bilinear", lungs="crop", equalize="clahe"),
    augment=AugmentConfig(rotation=10.0, shift=0.08, zoom=0.1),
    optimizer="adamw",
    lr=2e-3,
    weight_decay=1e-4,
    scheduler="cosine",
    warmup_epochs=1,
    ema_decay=0.99,
    epochs=16,
    batch_size=32,
    patience=5,
    class_weights="balanced",
    subtype_weight=0.5,
    seed=1,
    split_seed=42,
    threshold_policy="sensitivity:0.97",
    calibrate=True,
)

# The recipe to retrain on other films: ``crop_clahe`` with each film's exposure first normalised on
# the lungs (better by patient cross-validation and on the external films, rounds 19-20), trained for
# 24 epochs instead of 16 (round 25) and the final weights kept instead of the lowest-validation-loss
# epoch (round 24). Seed 1 gives runs/v25/e24_s1 of the log.
LUNG_GAMMA = dataclasses.replace(
    CROP_CLAHE,
    preset="lung_gamma",
    preprocess=dataclasses.replace(CROP_CLAHE.preprocess, lung_gamma=0.45),
    epochs=24,
    start_from_epoch=-1,
)

# ``lung_gamma`` trained for 32 epochs, training seed 17: round 26's best validated draw (ROC-AUC 0.99110
# against 0.99031 for the model shipped from round 5), shipped until round 33 and the first step of
# the shipped model's recipe since round 34 (``training.recipe``). 32 epochs were not adopted over 24
# as a recipe (lower on validation at two of three paired seeds), so ``lung_gamma`` stays the recipe
# to retrain on other films.
DEFAULT = dataclasses.replace(LUNG_GAMMA, preset="default", epochs=32, seed=17)

PRESETS: dict[str, TrainConfig] = {
    "seed": SEED,
    "default": DEFAULT,
    "lung_gamma": LUNG_GAMMA,
    "crop_clahe": CROP_CLAHE,
}


def check_band_rule(
    share: float | None, risk: float | None, either: bool = True, confidence: float | None = None
) -> None:
    """Refuse a ``borderline`` band rule (``TrainConfig``, ``ensemble``, ``calibrate``) before any film
    is read: a share, a risk or a confidence outside (0, 1), (``either``) both a share and a risk,
    as each sets the band, or a confidence without the risk it bounds."""
    if either and share is not None and risk is not None:
        raise ValueError("borderline_share and borderline_risk both set the band: give one")
    if confidence is not None and risk is None:
        raise ValueError("borderline_confidence bounds the error rate of borderline_risk: give that too")
    for name, value in (("borderline_share", share), ("borderline_risk", risk), ("borderline_confidence", confidence)):
        if value is not None and not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value}")


# fields whose values a flag's type does not bound (a config file's never are): (test, what it must be)
RANGES: dict[str, tuple[Any, str]] = {
    "epochs": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "limit": (lambda v: v >= 1, "at least 1"),
    "num_nodes": (lambda v: v >= 1, "at least 1"),
    "num_workers": (lambda v: v >= 0, ">= 0"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "lr": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0: off)"),
    "val_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
}


def resolve_config(preset: str, **overrides: Any) -> TrainConfig:
    """The preset's config with every non-None override applied.

    ``image_size``, ``lungs``, ``lung_margin``, ``lung_gamma`` and ``clahe_clip`` are shortcuts into
    ``preprocess``; ``rotation``, ``shift``, ``zoom``, ``gamma``, ``contrast``, ``mixup``, ``hflip``,
    ``erase``, ``blur`` and ``bias_field`` into ``augment``; ``preprocess`` (a dict) sets its other
    fields (``channels``, ``interpolation``, ``soft_floor``: ``read_config_file``).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for name, (fits, said) in RANGES.items():
        if name in overrides and not fits(overrides[name]):
            raise ValueError(f"{name} must be {said}, got {overrides[name]} (--{name.replace('_', '-')})")
    if "preprocess" in overrides:
        cfg = dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, **overrides.pop("preprocess")))
    if "image_size" in overrides:
        size = int(overrides.pop("image_size"))
        if size < 16:
            raise ValueError(f"image_size must be at least 16, got {size}")
        cfg = dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, image_size=size))
    if "equalize" in overrides:
        eq = overrides.pop("equalize")
        if eq not in ("none", "clahe"):
            raise ValueError(f"unknown equalize mode {eq!r}; valid: none, clahe")
        cfg = dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, equalize=eq))
    if "clahe_clip" in overrides:
        clip = float(overrides.pop("clahe_clip"))
        if not 0 < clip <= 1:
            raise ValueError(f"clahe_clip must be in (0, 1], got {clip}")
        cfg = dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, clahe_clip=clip))
    if "lung_margin" in overrides:
        margin = float(overrides.pop("lung_margin"))
        if not 0 <= margin < 0.5:
            raise ValueError(f"lung_margin must be in [0, 0.5), got {margin}")
        cfg = dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, lung_margin=margin))
    if "lungs" in overrides:
        lungs = overrides.pop("lungs")
        if lungs not in ("none", "crop", "mask", "soft", "crop_soft"):
            raise ValueError(f"unknown lungs mode {lungs!r}; valid: none, crop, mask, soft, crop_soft")
        cfg = dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, lungs=lungs))
    if "lung_gamma" in overrides:
        target = float(overrides.pop("lung_gamma"))
        if not 0 <= target < 1:
            raise ValueError(f"lung_gamma must be in [0, 1) (0: off), got {target}")
        cfg = dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, lung_gamma=target))
    if cfg.preprocess.lung_gamma > 0 and cfg.preprocess.lungs == "none":
        raise ValueError(
            "lung_gamma reads the lung mask: it needs --lungs crop, mask, soft or crop_soft (or --lung-gamma 0)"
        )
    names = ("rotation", "shift", "zoom", "gamma", "contrast", "mixup", "hflip", "erase", "blur", "bias_field")
    aug: dict[str, float] = {k: float(overrides.pop(k)) for k in names if k in overrides}
    if aug:
        if any(v < 0 for v in aug.values()) or any(aug.get(k, 0.0) >= 1 for k in ("zoom", "shift", "contrast")):
            raise ValueError(f"augmentation ranges must be >= 0 (shift, zoom and contrast < 1), got {aug}")
        if any(aug.get(k, 0.0) > 1 for k in ("hflip", "erase")):
            raise ValueError(f"hflip and erase are probabilities in [0, 1], got {aug}")
        if aug.get("rotation", 0.0) > 180:
            raise ValueError(f"rotation is at most 180 degrees either way, got {aug['rotation']} (--rotation)")
        cfg = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, **aug))
    epochs = overrides.get("epochs", cfg.epochs)
    start = overrides.get("start_from_epoch", cfg.start_from_epoch)
    if not -epochs <= start < epochs:
        raise ValueError(
            f"start_from_epoch must be in [-epochs, epochs) = [{-epochs}, {epochs}), got {start} (--start-from-epoch)"
        )
    refit = overrides.get("refit", cfg.refit)
    if refit and start not in (-1, epochs - 1):
        raise ValueError(
            f"refit trains on the validation films, so no epoch can be chosen on them: keep the final weights "
            f"with --start-from-epoch -1 (got {start})"
        )
    if refit and (str(overrides.get("devices", 1)) != "1" or overrides.get("num_nodes", 1) != 1):
        raise ValueError("refit loads its held-out twin between two trainings: train it on one device (--devices 1)")
    if overrides.get("patience", 0) < 0:
        raise ValueError(f"patience must be >= 0, got {overrides['patience']}")
    if not 0 <= overrides.get("label_smoothing", 0.0) < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {overrides['label_smoothing']}")
    if overrides.get("distill_weight", 0.0) < 0:
        raise ValueError(f"distill_weight must be >= 0, got {overrides['distill_weight']}")
    if bool(overrides.get("teacher", cfg.teacher)) != (overrides.get("distill_weight", cfg.distill_weight) > 0):
        raise ValueError("--teacher and --distill-weight (> 0) go together: give both or neither")
    if overrides.get("rank_weight", 0.0) < 0:
        raise ValueError(f"rank_weight must be >= 0, got {overrides['rank_weight']}")
    if overrides.get("rank_weight", cfg.rank_weight) > 0 and cfg.augment.mixup > 0:
        raise ValueError("rank_weight needs hard labels and mixup blends them: pick one")
    if overrides.get("sam_rho", 0.0) < 0:
        raise ValueError(f"sam_rho must be >= 0, got {overrides['sam_rho']}")
    if overrides.get("sam_rho", cfg.sam_rho) > 0 and str(overrides.get("precision", cfg.precision)).startswith("16"):
        raise ValueError(  # "auto" resolving to 16-bit (a GPU without bf16) is refused in fit()
            "sam_rho does not work with 16-bit precision (its gradient scaler sees only the first of the two "
            "passes); use --precision bf16-mixed or 32-true"
        )
    if overrides.get("ssl_epochs", 0) < 0:
        raise ValueError(f"ssl_epochs must be >= 0, got {overrides['ssl_epochs']}")
    if overrides.get("ssl_lr", 1.0) <= 0:
        raise ValueError(f"ssl_lr must be > 0, got {overrides['ssl_lr']}")
    if overrides.get("ssl_epochs", cfg.ssl_epochs) and overrides.get("init", cfg.init):
        raise ValueError("--init starts from features pretrained elsewhere; --ssl-epochs pretrains them here: pick one")
    if overrides.get("group_dro", 0.0) < 0:
        raise ValueError(f"group_dro must be >= 0, got {overrides['group_dro']}")
    if overrides.get("group_dro", cfg.group_dro) > 0:
        if overrides.get("class_weights", cfg.class_weights) != "none":
            raise ValueError("group_dro weights the groups itself, in place of class weights: add --class-weights none")
        if overrides.get("patient_weighting", cfg.patient_weighting):
            raise ValueError("group_dro and patient_weighting both weight the films: pick one")
        if cfg.augment.mixup > 0:
            raise ValueError("group_dro needs each film's group and mixup blends two films: pick one")
    check_band_rule(
        overrides.get("borderline_share"),
        overrides.get("borderline_risk"),
        confidence=overrides.get("borderline_confidence"),
    )
    if not 0 <= overrides.get("exposure_balance", 0.0) <= 1:
        raise ValueError(f"exposure_balance must be in [0, 1], got {overrides['exposure_balance']}")
    if overrides.get("exposure_balance", cfg.exposure_balance) > 0 and overrides.get("group_dro", cfg.group_dro) > 0:
        raise ValueError("group_dro and exposure_balance both weight the films: pick one")
    if overrides.get("subtype_weight", 0.0) < 0:
        raise ValueError(f"subtype_weight must be >= 0, got {overrides['subtype_weight']}")
    if overrides.get("subtype_weight", cfg.subtype_weight) > 0 and cfg.augment.mixup > 0:
        raise ValueError(
            "subtype_weight and mixup cannot be combined (mixup blends the subtypes of two images); "
            "add --subtype-weight 0 to train with mixup"
        )
    if overrides.get("series_adversary", 0.0) < 0:
        raise ValueError(f"series_adversary must be >= 0, got {overrides['series_adversary']}")
    if overrides.get("series_adversary", cfg.series_adversary) > 0 and cfg.augment.mixup > 0:
        raise ValueError("series_adversary needs each film's series and mixup blends two films: pick one")
    return dataclasses.replace(cfg, **overrides)


PREPROCESS_SHORTCUTS = ("image_size", "lungs", "lung_margin", "lung_gamma", "clahe_clip", "equalize")


def read_config_file(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any]]:
    """A run's config from a JSON or YAML file (a run's ``config.json``, or a few fields of one) as
    ``resolve_config``'s arguments: its ``preset`` (None when it names none) and its other fields, those
    of ``preprocess`` and ``augment`` given as the shortcuts (``preprocess``'s others as a dict). Fields
    it leaves out keep the preset's values; the command line's flags go on top (``train --config``).

    Raises:
        ValueError: the file unreadable, not a mapping, or a field unknown or of the wrong type, named.
    """
    import yaml

    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
        yaml_file = Path(path).suffix.lower() in (".yaml", ".yml")
        data = yaml.safe_load(text) if yaml_file else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{where}: not a readable JSON or YAML config ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a config is a mapping of fields, got {type(data).__name__}")
    data = dict(data)
    out: dict[str, Any] = {}
    for section, cls in (("preprocess", PreprocessConfig), ("augment", AugmentConfig)):
        part = data.pop(section, None) or {}
        if not isinstance(part, dict):
            raise ValueError(f"{where}: {section} is a mapping of fields, got {part!r}")
        hints = typing.get_type_hints(cls)
        for name, value in part.items():
            _check_field(where, f"{section}.{name}", hints.get(name), value)
            value = float(value) if hints[name] is float else value
            if section == "augment" or name in PREPROCESS_SHORTCUTS:
                out[name] = value
            else:
                out.setdefault("preprocess", {})[name] = value
    hints = typing.get_type_hints(TrainConfig)
    for name, value in data.items():
        _check_field(where, name, hints.get(name), value)
        out[name] = float(value) if hints[name] is float and value is not None else value
    if out.get("borderline_risk") is not None:  # a risk sets the band: the share beside it is the unused default
        out.pop("borderline_share", None)
    return out.pop("preset", None), out


def _check_field(where: str, name: str, hint: Any, value: Any) -> None:
    if hint is None:
        raise ValueError(f"{where}: unknown config field {name!r}")
    if not _fits(hint, value):
        literal = typing.get_origin(hint) is Literal
        said = f"one of {', '.join(map(repr, typing.get_args(hint)))}" if literal else _type_name(hint)
        tip = " (YAML reads 1e-3 as text: write 1.0e-3)" if _number_as_text(value) else ""
        raise ValueError(f"{where}: {name} must be {said}, got {value!r}{tip}")


def _number_as_text(value: Any) -> bool:
    """Whether YAML gave a number in exponent form without a dot (``1e-3``) as text."""
    if not isinstance(value, str) or "e" not in value.lower():
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _fits(hint: Any, value: Any) -> bool:
    """Whether a value read from a config file has the field's type (``Literal``, unions, plain types)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    if typing.get_args(hint):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return {bool: "true or false", int: "an integer", float: "a number", str: "text", dict: "a mapping"}.get(
        hint, "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
    )
