"""Mask arithmetic and plausibility flags against hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest

from pneumolens.lungs.flags import INVERTED_FLAG, MIRRORED_FLAG, describe, plausibility_flags
from pneumolens.lungs.masks import (
    attribution_lung_fraction,
    bounding_box,
    convex_hull,
    dice,
    dilate,
    fill_holes,
    keep_largest,
)


def two_lungs(size: int = 100, top: int = 20, bottom: int = 80) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[top:bottom, 15:42] = True  # right lung (image left)
    m[top:bottom, 58:85] = True  # left lung
    return m


def test_dice_hand_cases():
    a = np.zeros((10, 10), bool)
    a[:, :5] = True
    b = np.zeros((10, 10), bool)
    b[:, 2:7] = True  # overlap 30, sizes 50 + 50
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(a, b) == pytest.approx(2 * 30 / 100)
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, a[:5])


def test_keep_largest_drops_specks_and_fills_holes():
    m = two_lungs()
    m[40:45, 20:25] = False  # a hole
    m[2:4, 2:4] = True  # a speck
    m[90:95, 48:52] = True  # a third, small blob
    clean = keep_largest(m)
    assert clean[42, 22] and not clean[3, 3] and not clean[92, 50]
    assert dice(clean, two_lungs()) == 1.0
    assert not keep_largest(np.zeros((5, 5), bool)).any()


def test_fill_holes_is_scipys_pixel_for_pixel():
    """fill_holes (one labelling of the background) against scipy's binary_fill_holes: random masks
    of every density, holes and blobs at the edges, a single row or column, all set, none set."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    masks = [
        rng.random(shape) < density
        for shape in [(64, 48), (7, 90), (1, 30), (30, 1), (3, 3)]
        for density in (0.05, 0.3, 0.5, 0.6, 0.9)
    ]
    ring = np.ones((20, 20), bool)
    ring[5:15, 5:15] = False  # a hole inside
    ring[0, 8] = ring[1, 8] = False  # a dent from the edge: not a hole
    masks += [ring, ~ring, np.ones((6, 6), bool), np.zeros((6, 6), bool)]
    for m in masks:
        assert np.array_equal(fill_holes(m), ndimage.binary_fill_holes(m)), m.shape
    assert fill_holes(ring)[10, 10] and not fill_holes(ring)[0, 8]


def test_dilate_box_and_hull():
    m = np.zeros((50, 50), bool)
    m[20:30, 20:30] = True
    grown = dilate(m, 0.1)  # 5 px
    assert grown[15, 25] and grown[34, 25] and not grown[13, 25]
    assert bounding_box(m) == (20, 30, 20, 30) and bounding_box(np.zeros((4, 4))) is None
    hull = convex_hull(two_lungs())
    assert hull[50, 50] and not two_lungs()[50, 50]  # the mediastinum between the lungs is inside
    assert not hull[10, 50] and not hull[50, 5]


def test_attribution_lung_fraction():
    lungs = two_lungs()
    attr = np.zeros(lungs.shape)
    attr[lungs] = 1.0
    assert attribution_lung_fraction(attr, lungs) == 1.0
    attr[95, :] = -50.0  # negative attribution never counts
    attr[0, 0] = lungs.sum()  # as much positive attribution outside as inside
    assert attribution_lung_fraction(attr, lungs) == pytest.approx(0.5)
    assert attribution_lung_fraction(-np.ones(lungs.shape), lungs) is None


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: two_lungs(), []),  # 32% of the image, away from the border
        (lambda: np.zeros((100, 100), bool), ["no_lungs_found"]),
        (lambda: two_lungs(top=0, bottom=60), ["lungs_cut_off"]),  # touches the top edge
        (lambda: two_lungs(top=45, bottom=55), ["unusual_lung_area"]),  # 5.4%
        (lambda: np.pad(np.ones((90, 90), bool), 5), ["unusual_lung_area"]),  # 81%
        (lambda: np.ones((100, 100), bool), ["lungs_cut_off", "unusual_lung_area"]),
    ],
)
def test_flags(make, expected):
    flags = plausibility_flags(make())
    assert flags == expected
    assert (describe(flags) is None) == (not expected)


@pytest.mark.parametrize(
    "inside, outside, expected",
    [
        (0.6, 0.9, ["grey_lungs"]),  # grey lungs
        (0.5, 0.9, []),  # on the bound: not above it
        (0.3, 0.9, []),  # dark lungs in a bright film: only the lungs count
        (0.3, 0.1, []),
    ],
)
def test_grey_lungs_caution_reads_the_median_inside_the_lungs(inside, outside, expected):
    lungs = two_lungs()  # 100 x 100, as the segmenter's low-resolution mask
    gray = np.where(np.kron(lungs, np.ones((3, 3), bool)), inside, outside)  # the image at 300 x 300
    gray[:3, :3] = 1.0 - inside  # a few outliers do not move a median
    # a two-tone synthetic film: what the orientation checks make of it is not this test's business
    # (lungs brighter than the body, the last case, do look inverted: tests/test_orientation.py)
    flags = [f for f in plausibility_flags(lungs, gray) if f not in (INVERTED_FLAG, MIRRORED_FLAG)]
    assert flags == expected
    assert plausibility_flags(lungs) == []  # without the image: no caution
    if expected:
        assert "weigh a pneumonia call with care" in describe(flags)


def test_no_lungs_found_says_nothing_of_their_exposure():
    assert plausibility_flags(np.zeros((100, 100), bool), np.full((100, 100), 0.9)) == ["no_lungs_found"]
