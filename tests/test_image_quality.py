"""The image-quality flags, ``noisy`` and ``low_detail``: the measures on known signals, and the flags
on real films as stored, degraded and at full resolution, through the flags and the Python API."""

from __future__ import annotations

import numpy as np
import pytest

import pneumolens
from conftest import FULLRES, SHARED, load_benchmark, real_images
from pneumolens.data.images import read_image
from pneumolens.lungs.flags import LOW_DETAIL_FLAG, NOISY_FLAG, describe, plausibility_flags
from pneumolens.lungs.quality import DETAIL_MIN, NOISE_MAX, SIZE, detail, noise_level, quality_flags, standard
from pneumolens.lungs.segment import LungSegmenter


def films() -> list[np.ndarray]:
    """Kaggle test films of both classes and adult NLM films (another source, other detectors)."""
    nlm = sorted((SHARED / "lung_masks" / "images").iterdir())[::100][:4]
    return [read_image(p) for p in real_images("test", "NORMAL", 4) + real_images("test", "PNEUMONIA", 4) + nlm]


RB = load_benchmark("robustness")  # the degradations the bounds were set on


def test_the_noise_estimate_reads_white_noise_on_a_smooth_film():
    """On a ramp (which the estimator's mask cancels) plus white noise of a known sd, it gives that sd."""
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.linspace(0.2, 0.6, SIZE), np.linspace(0, 0.2, SIZE)).astype(np.float32)
    assert noise_level(ramp) < 1e-6
    for sigma in (0.01, 0.03, 0.05):
        noisy = (ramp + rng.normal(0, sigma, ramp.shape)).astype(np.float32)
        assert noise_level(noisy) == pytest.approx(sigma, rel=0.03)


def test_the_detail_measure_falls_as_a_film_loses_its_finest_scale():
    x = standard(read_image(real_images("test", "NORMAL", 1)[0]))
    sharp, half, quarter = detail(x), detail(standard(RB.shrink(2)(x, None))), detail(standard(RB.shrink(4)(x, None)))
    assert sharp > DETAIL_MIN + 0.08 and sharp > half > quarter and quarter < DETAIL_MIN
    assert detail(np.full((SIZE, SIZE), 0.5, np.float32)) == 0.0  # a flat image has no detail at all


def test_films_as_stored_and_at_full_resolution_are_not_flagged():
    full = [read_image(p) for label in ("NORMAL", "PNEUMONIA") for p in sorted((FULLRES / label).iterdir())[:2]]
    assert max(g.shape[0] for g in full) > 2 * SIZE  # resized to SIZE before they are judged
    for gray in films() + full:
        assert quality_flags(gray) == [], (gray.shape, noise_level(standard(gray)), detail(standard(gray)))


@pytest.mark.parametrize(
    ("name", "flag"),
    [
        ("noise sd 0.05", NOISY_FLAG),
        ("noise sd 0.03", NOISY_FLAG),
        ("sent at 1/4 size", LOW_DETAIL_FLAG),
        ("blur radius 1.5 px", LOW_DETAIL_FLAG),
    ],
)
def test_degraded_real_films_are_flagged(name, flag):
    for i, gray in enumerate(map(standard, films())):  # degraded at the scale the measures read (NLM films: 256 px)
        assert quality_flags(RB.degraded(gray, name, i)) == [flag], name


def test_mild_noise_is_not_flagged():
    """Noise of sd 0.02 does not move the model (README, Reliability), so it is not flagged either."""
    for i, gray in enumerate(map(standard, films())):
        assert NOISE_MAX > noise_level(RB.degraded(gray, "noise sd 0.02", i)) > 0.015


def test_the_flags_reach_the_api_with_their_sentences():
    gray = read_image(real_images("test", "PNEUMONIA", 2)[1])
    noisy, small = RB.degraded(gray, "noise sd 0.05", 3), RB.degraded(gray, "sent at 1/4 size", 3)
    plain, loud, tiny = pneumolens.load().predict([gray, noisy, small])
    assert NOISY_FLAG not in plain.flags and LOW_DETAIL_FLAG not in plain.flags
    assert NOISY_FLAG in loud.flags and "much noisier" in loud.warning
    assert LOW_DETAIL_FLAG in tiny.flags and "little fine detail" in tiny.warning
    mask = LungSegmenter.shipped().mask(noisy, full_size=False)
    assert NOISY_FLAG not in plausibility_flags(mask)  # the mask alone cannot tell: the image is needed
    assert "resolution the modality stored" in describe([LOW_DETAIL_FLAG])
    # the measures behind the flags come with each result: the ones the flags were judged from
    for r, film in ((plain, gray), (loud, noisy), (tiny, small)):
        assert r.measures["noise"] == pytest.approx(noise_level(standard(film)))
        assert r.measures["detail"] == pytest.approx(detail(standard(film)))
        assert (r.measures["noise"] > NOISE_MAX) == (NOISY_FLAG in r.flags)
        assert (r.measures["detail"] < DETAIL_MIN) == (LOW_DETAIL_FLAG in r.flags)
        assert 0.06 < r.measures["lung_area"] < 0.55 and 0 < r.measures["lung_median"] < 1


def test_every_flag_has_a_sentence_and_is_named_in_the_api_schema():
    from pneumolens.lungs.flags import MESSAGES
    from pneumolens.service.schemas import Prediction

    described = Prediction.model_fields["flags"].description
    assert {NOISY_FLAG, LOW_DETAIL_FLAG} <= set(MESSAGES)
    assert [f for f in MESSAGES if f not in described] == []
