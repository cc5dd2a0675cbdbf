"""Is this a frontal chest X-ray? Plausibility flags from the lung mask, and two cautions.

Bounds come from the 701 manual masks of the training data (at 128x128): lung area 11.2-43.4% of
the image (1st-99th percentile 13.7-39.2%), and the mask touches the image edge on 0% of the
perimeter for 99% of films (at most 7.6%). The bounds below leave room for pediatric films, whose
smaller lungs sit in a wider field of view.

The caution, ``grey_lungs``, needs the image too: the median pixel inside the lungs is above
``GREY_LUNGS``. Normal films like that are where every model of the quality work made most of its
false positives: the shipped model calls 16 of the 33 such normal films of the Kaggle test split
pneumonia (12 of the 201 others), and a pneumonia call on a grey-lung test film is right 86% of the
time against 96% on the others (docs/results.md, rounds 19 and 36).

``inverted`` and ``mirrored`` need the image too: the orientation checks (``pneumolens.lungs.orientation``)
find the film inverted (bone dark, air bright) or mirrored left to right, which the mask-based flags
mostly miss and which turn the model's calls (``benchmarks/robustness.py``). A film found inverted
is not also judged for mirroring: the mirror check learnt on films the right way up.

``noisy`` and ``low_detail`` need the image too (``pneumolens.lungs.quality``): a film much noisier
than the training films, or with less fine detail (a small or blurred image), on which the model
calls more normal films pneumonia (``benchmarks/robustness.py``).

The other caution, ``borderline``, comes from the model's probability, not the film: it lies in the
band around the operating point that holds the model's least sure calls
(``pneumolens.evaluation.selective``; ``selective.borderline_flags``).

``older_than_training`` comes from the patient's age, not the pixels: a DICOM file's header
(``pneumolens.data.scope.header_flags``) or an age the sender gives (a manifest's ``age`` column,
``predict --age``, the server's ``age``, the Python API's ``age``): a patient older than the children
the model learnt from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from pneumolens.data.scope import OLDER_THAN_TRAINING

MIN_LUNG_AREA = 0.01  # below this, nothing lung-like was found
AREA_RANGE = (0.06, 0.55)  # half the smallest and 1.25x the largest manual mask's share
MAX_EDGE_CONTACT = 0.04  # share of the image perimeter the lungs may touch
GREY_LUNGS = 0.5  # a lung median (grayscale in [0, 1]) above this: greyer lungs than most pneumonia films
GREY_LUNGS_FLAG = "grey_lungs"  # the caution: a less reliable result, not a wrong input
BORDERLINE_FLAG = "borderline"  # a caution too: the probability lies near the operating point
CAUTIONS = (GREY_LUNGS_FLAG, BORDERLINE_FLAG)  # about the result, not the input
MIRRORED_FLAG = "mirrored"
INVERTED_FLAG = "inverted"
NOISY_FLAG = "noisy"
LOW_DETAIL_FLAG = "low_detail"
MEASURES = ("lung_area", "lung_median", "noise", "detail")  # what flags_and_measures measures

MESSAGES = {
    "no_lungs_found": "no lung fields found: this does not look like a frontal chest X-ray",
    "lungs_cut_off": "the lung fields touch the image border: the film may be cropped or rotated",
    "unusual_lung_area": "the lung fields cover an unusual share of the image: check the view and framing",
    GREY_LUNGS_FLAG: "the lungs look grey overall: normal films like this are the model's most frequent false "
    "positives, so weigh a pneumonia call with care",
    BORDERLINE_FLAG: "the probability lies near the operating point, among the model's least sure calls (the band "
    "around its threshold that held the films nearest it when the operating point was set, and most of its errors "
    "there): the call could go either way",
    INVERTED_FLAG: "the film looks inverted (bone dark, air bright), as a MONOCHROME1 image exported without its "
    "inversion would: the model's reading of it means nothing; send the film as its modality shows it",
    MIRRORED_FLAG: "the film looks mirrored left to right (the heart on the image's left): check the side marker; "
    "the model reads films the standard way round and calls most mirrored normal films pneumonia",
    NOISY_FLAG: "the film is much noisier than the films the model learnt from: it calls more normal films like this "
    "pneumonia; send the film as the modality stored it, not re-processed",
    OLDER_THAN_TRAINING: "by the age the DICOM header or the sender gives, the patient is older than the patients the "
    "model learnt from (for the shipped model, children aged one to five): it never saw an older patient's pneumonia; "
    "weigh its call with care",
    LOW_DETAIL_FLAG: "the film holds little fine detail (a small, thumbnail or blurred image): the model calls more "
    "normal films like this pneumonia; send it at the resolution the modality stored",
}


def lung_fraction(mask: np.ndarray) -> float:
    return float(np.asarray(mask, bool).mean())


def plausibility_flags(mask: np.ndarray, gray: np.ndarray | None = None) -> list[str]:
    """Flags for a boolean lung mask of ``gray`` (any resolution); an empty list means the mask looks
    like two normal lung fields and, when ``gray`` is given, the lungs are not grey overall, the
    film is the standard way round and way up, and it is neither noisy nor short of detail."""
    if gray is None:
        return _mask_flags(np.asarray(mask, bool))
    return flags_and_measures(mask, gray)[0]


def _mask_flags(m: np.ndarray) -> list[str]:
    area = m.mean()
    if area < MIN_LUNG_AREA:
        return ["no_lungs_found"]
    flags = []
    perimeter = np.concatenate([m[0], m[-1], m[1:-1, 0], m[1:-1, -1]])
    if perimeter.mean() > MAX_EDGE_CONTACT:
        flags.append("lungs_cut_off")
    if not AREA_RANGE[0] <= area <= AREA_RANGE[1]:
        flags.append("unusual_lung_area")
    return flags


def flags_and_measures(mask: np.ndarray, gray: np.ndarray) -> tuple[list[str], dict[str, float | None]]:
    """``plausibility_flags`` of the film ``gray`` and its lung ``mask``, and the measures behind them:
    ``lung_area`` (share of the mask), ``lung_median`` (None without lungs), ``noise`` and
    ``detail`` (``pneumolens.lungs.quality``). The audit trail keeps the measures, so that a drift of
    the inputs shows before it crosses a flag's bound (``pneumolens.monitoring.drift``)."""
    return flags_and_measures_of([mask], [gray])[0]


def flags_and_measures_of(
    masks: Sequence[np.ndarray], grays: Sequence[np.ndarray]
) -> list[tuple[list[str], dict[str, float | None]]]:
    """``flags_and_measures`` for many films, the orientation checks run on them in batches."""
    from pneumolens.lungs.orientation import OrientationCheck
    from pneumolens.lungs.preprocess import lung_median
    from pneumolens.lungs.quality import quality_flags, quality_measures

    out = []
    for mask, gray in zip(masks, grays, strict=True):
        m = np.asarray(mask, bool)
        flags = _mask_flags(m)
        quality = quality_measures(gray)
        lungs = flags != ["no_lungs_found"]
        median = lung_median(gray, m) if lungs else None
        if median is not None and median > GREY_LUNGS:
            flags.append(GREY_LUNGS_FLAG)
        out.append((flags, {"lung_area": float(m.mean()), "lung_median": median, **quality}))
    # orientation and quality only where lungs were found: a blank or a noise image says no more
    found = [i for i, (flags, _) in enumerate(out) if flags != ["no_lungs_found"]]
    inverted = OrientationCheck.shipped("invert").find([grays[i] for i in found])
    upright = [i for i, inv in zip(found, inverted, strict=True) if not inv]
    mirror = OrientationCheck.shipped("mirror").find([grays[i] for i in upright])
    mirrored = {i for i, m in zip(upright, mirror, strict=True) if m}
    for i, inv in zip(found, inverted, strict=True):
        flags, measures = out[i]
        if inv:
            flags.append(INVERTED_FLAG)
        elif i in mirrored:
            flags.append(MIRRORED_FLAG)
        flags += quality_flags(grays[i], measures)
    return out


def check_flags(flags: Iterable[str]) -> list[str]:
    """The flags that ask to check the image, in order: all but the cautions (``grey_lungs``,
    ``borderline``), which are about the result, not the input."""
    return [f for f in flags if f not in CAUTIONS]


def describe(flags: list[str]) -> str | None:
    """One sentence for a person, or None when there is nothing to say."""
    return "; ".join(MESSAGES[f] for f in flags) or None
