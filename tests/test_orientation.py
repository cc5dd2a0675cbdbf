"""The mirrored- and inverted-film checks: the shipped networks on real films, the flags, their
training, and the robustness benchmark's degradations."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import pneumolens
from conftest import SHARED, load_benchmark, nlm_subset, real_images
from pneumolens.checkpoint import shipped_model_path
from pneumolens.cli import main
from pneumolens.data.images import read_image
from pneumolens.lungs.flags import INVERTED_FLAG, MIRRORED_FLAG, describe, plausibility_flags
from pneumolens.lungs.orientation import OrientationCheck
from pneumolens.lungs.segment import LungSegmenter

MASKS = SHARED / "lung_masks"


def nlm_test_films(n: int) -> list:
    with open(MASKS / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    return [MASKS / "images" / f"{r['id']}.png" for r in rows[:: max(1, len(rows) // n)][:n]]


@pytest.mark.parametrize(
    ("transform", "change", "caught"),
    [("mirror", lambda g: np.ascontiguousarray(g[:, ::-1]), 34), ("invert", lambda g: 1 - g, 36)],
)
def test_the_shipped_checks_know_which_way_real_films_are(transform, change, caught):
    """Kaggle test films of both classes and adult NLM test films, as stored and transformed."""
    paths = real_images("test", "NORMAL", 12) + real_images("test", "PNEUMONIA", 12) + nlm_test_films(12)
    grays = [read_image(p) for p in paths]
    check = OrientationCheck.shipped(transform)
    stored = check.probabilities(grays)
    changed = check.probabilities([change(g) for g in grays])
    assert check.transform == transform and check.threshold == pytest.approx(0.7)  # chosen on validation
    assert (stored >= check.threshold).sum() <= 1, stored
    assert (changed >= check.threshold).sum() >= caught, changed


def test_a_mirrored_film_is_flagged_through_the_api_and_the_mask_flags():
    gray = read_image(real_images("test", "NORMAL", 3)[1])
    flipped = np.ascontiguousarray(gray[:, ::-1])
    model = pneumolens.load()
    plain, mirrored = model.predict([gray, flipped])
    assert MIRRORED_FLAG not in plain.flags and MIRRORED_FLAG in mirrored.flags
    assert "mirrored left to right" in mirrored.warning and "side marker" in describe([MIRRORED_FLAG])
    mask = LungSegmenter.shipped().mask(flipped, full_size=False)
    assert MIRRORED_FLAG not in plausibility_flags(mask)  # the mask alone cannot tell: the image is needed
    assert MIRRORED_FLAG in plausibility_flags(mask, flipped)


def test_an_inverted_film_is_flagged_inverted_only():
    """An inverted film gets ``inverted`` and not also ``mirrored`` (that check learnt on films the right way up)."""
    model = pneumolens.load()
    for path in real_images("test", "PNEUMONIA", 4):
        gray = read_image(path)
        plain, inverted = model.predict([gray, 1 - gray])
        assert INVERTED_FLAG not in plain.flags and INVERTED_FLAG in inverted.flags
        assert MIRRORED_FLAG not in inverted.flags and "looks inverted" in inverted.warning


def test_another_model_file_or_transform_is_refused_by_name():
    with pytest.raises(ValueError, match="not an orientation model"):
        OrientationCheck.from_file(shipped_model_path())
    with pytest.raises(ValueError, match="unknown transform 'rotate'"):
        OrientationCheck.shipped("rotate")
    with pytest.raises(ValueError, match="not shipped 'turn'"):
        OrientationCheck.shipped("turn")


@pytest.mark.parametrize("transform, extra", [("invert", []), ("turn", ["--borders", "0.3"])])
def test_train_orientation_writes_a_check_that_loads(tiny_data, tmp_path, capsys, transform, extra):
    nlm = nlm_subset(
        tmp_path / "nlm",
        lambda rows: [r for s in ("train", "val", "test") for r in [r for r in rows if r["split"] == s][:6]],
    )
    out = tmp_path / "orientation"
    argv = ["train-orientation", "--transform", transform, "--data", str(tiny_data), "--lung-masks", str(nlm)]
    assert main([*argv, *extra, "--out", str(out), "--epochs", "1"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path.endswith(f"{transform}ed.safetensors")
    check = OrientationCheck.from_file(path)
    meta = check.loaded.meta
    assert check.transform == transform and meta["config"]["transform"] == transform
    assert meta["config"]["borders"] == (0.3 if extra else 0.0)
    assert meta["training"]["films"]["test"] == 6 and meta["training"]["films"]["train"] > 6
    assert meta["metrics"]["test"]["n"] == 6 and 0 <= meta["metrics"]["val"]["caught_transformed"] <= 1
    assert check.probabilities([read_image(real_images("test", "NORMAL", 1)[0])]).shape == (1,)


def test_a_digital_turn_blackens_the_corners_and_black_bands_stay_at_the_edges():
    """What the (unshipped) turn check learns from: ``turn`` rotates 5-25 degrees about the centre with
    black corners, any shape; ``black_borders`` blackens bands at the sides only."""
    import torch

    from pneumolens.lungs.orientation import turn
    from pneumolens.lungs.train_orientation import black_borders

    torch.manual_seed(0)
    x = 0.5 + 0.5 * torch.rand(16, 1, 96, 96)  # no black pixel anywhere
    turned = turn(x)
    assert turned.shape == x.shape and (turned[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]] == 0).all()
    assert (turned[:, 0, 40:56, 40:56] > 0.45).all()  # the middle is the film's, turned
    film = torch.from_numpy(read_image(real_images("test", "NORMAL", 1)[0]))  # (H, W), not square
    assert turn(film).shape == film.shape and turn(film)[0, 0] == 0
    banded = black_borders(torch.ones(8, 1, 96, 96), p=1.0)
    assert (banded[:, 0, 48, 0] == 0).all() and (banded[:, 0, 0, 48] == 0).all()  # every side, when p = 1
    assert (banded[:, 0, 20:76, 20:76] == 1).all()  # at most 10% in, slanted 3 degrees: the middle untouched
    assert torch.equal(black_borders(x, p=0.0), x)


def test_robustness_degradations_on_a_real_film():
    rb = load_benchmark("robustness")
    x = read_image(real_images("test", "PNEUMONIA", 1)[0])
    for name in rb.DEGRADATIONS:
        y = rb.degraded(x, name, seed=0)
        assert y.ndim == 2 and y.min() >= 0 and y.max() <= 1, name
        assert np.array_equal(y, rb.degraded(x, name, seed=0)), name  # seeded per film
    assert np.array_equal(rb.degraded(rb.degraded(x, "mirrored", 0), "mirrored", 0), x)
    assert np.allclose(rb.degraded(x, "inverted (MONOCHROME1 misread)", 0), 1 - x)
    h, w = x.shape
    assert rb.degraded(x, "cropped 10% a side", 0).shape == (h - 2 * round(h * 0.1), w - 2 * round(w * 0.1))
    assert rb.degraded(x, "black border 15% a side", 0).shape == (h + 2 * round(h * 0.15), w + 2 * round(w * 0.15))
    black, tilted = rb.degraded(x, "rotated 15 deg", 0), rb.degraded(x, "rotated 15 deg, no black corners", 0)
    assert black.shape == tilted.shape == x.shape and black[:8, :8].max() == 0 < tilted[:8, :8].min()
    assert np.abs(tilted - black)[80:144, 80:144].max() < 0.1  # the same turn: the centres agree
    jpeg = rb.degraded(x, "JPEG quality 10", 0)
    assert 0 < np.abs(jpeg - x).mean() < 0.05  # changed, but the same film
    assert not np.array_equal(rb.degraded(x, "noise sd 0.05", 0), rb.degraded(x, "noise sd 0.05", 1))
