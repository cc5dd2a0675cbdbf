"""Explanations on a synthetic lesion a hand-built model keys on, and on real images end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import real_images
from pneumolens.checkpoint import load_model
from pneumolens.cli import main
from pneumolens.data.images import ImageReadError, read_image
from pneumolens.explain import explain_image
from pneumolens.explain.attribution import gradcam, lime, occlusion
from pneumolens.explain.faithfulness import deletion_insertion

SIZE, CY, CX, R = 64, 40, 20, 6


class LesionNet(nn.Module):
    """Responds only to very bright pixels: logit = 1000 * mean(relu(x - 0.8)) - 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 1)
        self.feature_layer = "act"
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0
            self.conv.bias.fill_(-0.8)
            self.fc.weight.fill_(1000.0)
            self.fc.bias.fill_(-2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1)).squeeze(1)


@pytest.fixture(scope="module")
def lesion():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img = 0.35 + 0.15 * np.sin(xx / 7.0) * np.cos(yy / 9.0) + 0.03 * rng.standard_normal((SIZE, SIZE))
    inside = (yy - CY) ** 2 + (xx - CX) ** 2 <= R**2
    img[inside] = 1.0
    x = torch.tensor(np.clip(img, 0, 1), dtype=torch.float32)[None, None]
    model = LesionNet().eval()
    assert torch.sigmoid(model(x)).item() > 0.9  # the model calls the lesion image positive
    return model, x, inside


def _argmax_inside(m: np.ndarray, inside: np.ndarray) -> bool:
    return bool(inside[np.unravel_index(np.argmax(m), m.shape)])


def test_gradcam_finds_the_lesion_and_releases_hooks(lesion):
    model, x, inside = lesion
    m = gradcam(model, x)
    assert m.shape == (SIZE, SIZE) and m.min() >= 0 and m.max() == pytest.approx(1.0)
    assert _argmax_inside(m, inside)
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks


def test_occlusion_finds_the_lesion(lesion):
    model, x, inside = lesion
    m = occlusion(model, x, window=8, stride=4)
    assert m.shape == (SIZE, SIZE) and -1 <= m.min() and m.max() == pytest.approx(1.0)
    assert _argmax_inside(m, inside)


def test_lime_finds_the_lesion_and_is_repeatable(lesion):
    model, x, inside = lesion
    m, segments, weights = lime(model, x, n_samples=300, seed=3)
    assert m.shape == (SIZE, SIZE) and -1 <= m.min() and m.max() <= 1
    lesion_segment = segments[CY, CX]
    assert weights.argmax() == lesion_segment  # the lesion's superpixel carries the most weight
    assert m[CY, CX] == m.max()
    again, _, _ = lime(model, x, n_samples=300, seed=3)
    assert np.array_equal(m, again)


def test_gradcam_is_more_faithful_than_a_random_map(lesion):
    model, x, _ = lesion
    cam = deletion_insertion(model, x, gradcam(model, x))
    rand = deletion_insertion(model, x, np.random.default_rng(0).random((SIZE, SIZE)))
    assert cam.deletion_auc < rand.deletion_auc
    assert cam.insertion_auc > rand.insertion_auc
    assert cam.deletion[0] == pytest.approx(cam.insertion[-1])  # both ends are the untouched image


@pytest.mark.parametrize("method", ["gradcam", "occlusion", "lime"])
def test_explain_image_on_a_real_film(trained_run, method):
    loaded = load_model(trained_run)
    path = real_images("test", "PNEUMONIA", 1)[0]
    e = explain_image(loaded, path, method, n_samples=200)
    assert e.heatmap.shape == e.image.shape == (224, 224)  # the input's resolution
    assert -1.0 <= e.heatmap.min() and e.heatmap.max() <= 1.0
    assert e.model_map.shape == (32, 32)
    assert e.label in ("NORMAL", "PNEUMONIA") and 0 <= e.probability <= 1
    assert e.lung_fraction is None or 0.0 <= e.lung_fraction <= 1.0
    assert set(e.to_dict()) >= {"label", "probability", "method", "seconds", "lung_fraction"}


def test_the_pictures_caption_wraps_so_that_every_flag_shows(trained_run):
    """A caption longer than the picture is wide goes on to more lines (the bar grows), none wider
    than the picture; a short one keeps the one-line bar of 40 px."""
    from PIL import ImageDraw

    from pneumolens.explain.render import CAPTION, caption_font, line_step, wrapped

    loaded = load_model(trained_run)
    gray = read_image(real_images("test", "NORMAL", 1)[0])
    x = explain_image(loaded, gray, "gradcam", flags=[])
    assert x.picture.size == (512, 512 + 40)  # a 224 px film drawn at 512 px, one caption line
    flags = ["grey_lungs", "older_than_training", "borderline", "low_detail", "lungs_cut_off", "noisy"]
    many = explain_image(loaded, gray, "gradcam", flags=flags, model_input=x.model_input, probability=x.probability)
    font = caption_font(512)
    lines = wrapped(CAPTION + "; flags: " + ", ".join(flags), 512 - 8, font)
    assert len(lines) >= 2 and many.picture.size == (512, 512 + 6 + line_step(font) * (1 + len(lines)))
    draw = ImageDraw.Draw(many.picture)
    assert all(draw.textlength(line, font=font) <= 512 - 8 for line in lines)
    assert " ".join(lines).endswith("lungs_cut_off, noisy")  # every flag, none cut off
    assert np.array_equal(np.asarray(many.picture)[-512:], np.asarray(x.picture)[-512:])  # the same map below
    assert wrapped("a " + "w" * 300, 100) == ["a", "w" * 300]  # a word too long for any line stands alone


def _caption_height(picture, bar: int) -> int:
    """Rows of the caption bar's first yellow line that hold yellow pixels (the glyphs' height)."""
    a = np.asarray(picture)[:bar].astype(int)
    rows = np.flatnonzero(((a[..., 0] > 200) & (a[..., 1] > 150) & (a[..., 2] < 90)).any(axis=1))
    return int(rows[-1] - rows[0] + 1)


def test_the_caption_grows_with_the_picture_so_a_full_resolution_films_stays_legible(trained_run):
    """A full-resolution original's picture is 1024 px wide, and the web page shows it at under half
    that: its caption is drawn twice as tall as a 512-px picture's, not in the same 11-px letters."""
    from conftest import FULLRES
    from pneumolens.explain.render import caption_font, line_step

    loaded = load_model(trained_run)
    film = read_image(sorted((FULLRES / "NORMAL").iterdir())[0])
    small = explain_image(loaded, read_image(real_images("test", "NORMAL", 1)[0]), "gradcam", flags=[])
    large = explain_image(loaded, film, "gradcam", flags=[])
    assert film.shape[1] > film.shape[0] > 1024  # wider than tall: its picture is 1024 px wide
    assert small.picture.width == 512 and large.picture.width == 1024
    bars = [6 + 2 * line_step(caption_font(w)) for w in (512, 1024)]  # one caption line on each
    assert small.picture.height - bars[0] == 512
    assert large.picture.height - bars[1] == round(film.shape[0] * 1024 / film.shape[1])
    heights = [_caption_height(x.picture, b) for x, b in zip((small, large), bars, strict=True)]
    assert 8 <= heights[0] and 1.7 * heights[0] <= heights[1]


def test_explain_cli_writes_png_and_json(trained_run, tmp_path, capsys):
    path = real_images("test", "NORMAL", 1)[0]
    out = tmp_path / "x.png"
    rc = main(
        [
            "explain",
            str(path),
            "--model",
            str(trained_run),
            "--method",
            "lime",
            "--samples",
            "200",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["method"] == "lime" and d["out"] == str(out) and out.stat().st_size > 10_000
    assert d["regions"] and all(0 < r["share"] <= 1 and r["points"][0] == r["points"][-1] for r in d["regions"])


def test_explain_refuses_what_predict_refuses(trained_run, tmp_path, capsys):
    bad = tmp_path / "notes.jpeg"
    bad.write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.jpeg: not a JPEG, PNG, TIFF or DICOM"):
        explain_image(load_model(trained_run), bad)
    assert main(["explain", str(bad), "--model", str(trained_run)]) == 2
    assert "notes.jpeg: not a JPEG, PNG, TIFF or DICOM" in capsys.readouterr().err
    path = str(real_images("test", "NORMAL", 1)[0])
    assert main(["explain", path, "--model", str(trained_run), "--method", "shap"]) == 2
    assert "valid: gradcam, lime, occlusion" in capsys.readouterr().err
    assert main(["explain", path, "--model", str(trained_run), "--layer", "features.11"]) == 2  # occlusion's
    assert "--layer applies to --method gradcam only, not occlusion" in capsys.readouterr().err
    assert main(["explain", path, "--model", str(trained_run), "--method", "lime", "--stride", "2"]) == 2
    assert "--stride applies to --method occlusion only, not lime" in capsys.readouterr().err
    assert main(["explain", path, "--model", str(trained_run), "--method", "gradcam", "--layer", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown layer 'nope'; valid: features" in err and "features.11" in err and "head" not in err


def test_explain_a_folder_writes_a_picture_per_film_and_passes_over_a_broken_one(trained_run, tmp_path, capsys):
    films = real_images("test", "NORMAL", 1) + real_images("test", "PNEUMONIA", 1)
    for folder, src in zip(("a", "b"), films, strict=True):  # two films of one name
        (tmp_path / "in" / folder).mkdir(parents=True)
        (tmp_path / "in" / folder / "film.jpeg").symlink_to(src)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    out = tmp_path / "maps"
    rc = main(
        ["explain", str(tmp_path / "in"), "--model", str(trained_run), "--method", "gradcam"]
        + ["--out-dir", str(out), "--json"]
    )
    assert rc == 1  # one file could not be read; the others were explained
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).relative_to(tmp_path / "in").as_posix() for r in rows] == [
        "a/film.jpeg",
        "b/film.jpeg",
        "broken.png",
    ]
    assert "error" in rows[2] and [Path(r["out"]).name for r in rows[:2]] == ["film_gradcam.png", "film-2_gradcam.png"]
    loaded = load_model(trained_run)
    for row, src in zip(rows[:2], films, strict=True):  # each picture and call is its own film's
        alone = explain_image(loaded, src, "gradcam")
        assert row["probability"] == pytest.approx(alone.probability, abs=1e-6) and row["label"] == alone.label
        assert Image.open(row["out"]).size == alone.picture.size
    for argv, said in (
        (["--out", str(tmp_path / "x.png")], "--out is for one image; for several, or a folder, the pictures go to"),
        (["--dicom-out", str(tmp_path / "d")], "--dicom-out is for one image"),
    ):
        assert main(["explain", str(tmp_path / "in"), "--model", str(trained_run), *argv]) == 2
        assert said in capsys.readouterr().err
    assert main(["explain", str(films[0]), "--model", str(trained_run), "--out-dir", str(out)]) == 2
    assert "--out-dir is for several images or a folder" in capsys.readouterr().err


def test_folders_say_the_files_they_leave_out_and_explain_says_the_flags(trained_run, tmp_path, capsys):
    """A folder's files of other kinds are named on stderr, not passed over in silence (by predict,
    explain and segment alike), and explain's lines end with the flags' warning as predict's do."""
    from pneumolens.lungs.flags import MESSAGES

    folder = tmp_path / "in"
    (folder / "deep").mkdir(parents=True)
    (folder / "film.jpeg").symlink_to(real_images("test", "NORMAL", 1)[0])
    Image.new("L", (64, 64), 0).save(folder / "blank.png")  # no lungs: flagged
    for name in ("a.bmp", "deep/b.webp", "notes.txt", "z.npy"):
        Image.new("L", (64, 64), 0).save(folder / name, format="BMP")
    (folder / ".hidden").write_text("skipped without a word")
    said = (
        f"note: {folder}: left out 4 file(s) that are not JPEG, PNG, TIFF or DICOM by their name or DICOM mark: "
        "a.bmp, deep/b.webp, notes.txt and 1 more"
    )
    model = ["--model", str(trained_run)]
    assert main(["predict", str(folder), *model]) == 0
    out, err = capsys.readouterr()
    assert said in err.splitlines() and len(out.splitlines()) == 2
    assert main(["explain", str(folder), *model, "--method", "gradcam", "--out-dir", str(tmp_path / "maps")]) == 0
    out, err = capsys.readouterr()
    assert said in err.splitlines()
    lines = dict(line.split("\t", 1) for line in out.splitlines())
    assert f"\tWARNING: {MESSAGES['no_lungs_found']}" in lines[str(folder / "blank.png")]  # the first of its flags
    assert "WARNING" not in lines[str(folder / "film.jpeg")]
    assert main(["explain", str(folder / "blank.png"), *model, "--method", "gradcam"]) == 0
    assert f"s\tWARNING: {MESSAGES['no_lungs_found']}" in capsys.readouterr().out
    assert main(["segment", str(folder), "--out-dir", str(tmp_path / "masks")]) == 0
    assert said in capsys.readouterr().err.splitlines()


def test_explain_evaluate_table(trained_run, tiny_data, capsys):
    rc = main(
        [
            "explain",
            "--evaluate",
            "--data",
            str(tiny_data),
            "--n",
            "4",
            "--model",
            str(trained_run),
            "--samples",
            "100",
            "--json",
        ]
    )
    assert rc == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {"gradcam", "lime", "occlusion", "random"}
    for r in results.values():
        assert r["n"] == 4 and 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1


@pytest.mark.parametrize("shape", [(300, 200), (2400, 1800)])  # traced as it is, and on the map scaled down 5x
def test_map_outlines_go_round_the_strongest_regions(shape):
    from pneumolens.explain.outlines import map_outlines

    h, w = shape
    heatmap = np.full(shape, -0.2, np.float32)  # against the call everywhere, but for:
    boxes = {  # (top, bottom, left, right) as shares of the side: value
        (0.2, 0.4, 0.5, 0.8): 1.0,  # the strongest region
        (0.6, 0.7, 0.1, 0.2): 0.7,
        (0.8, 0.9, 0.6, 0.7): 0.6,
        (0.05, 0.08, 0.05, 0.08): 0.55,  # above the level too, but the fourth: left out
        (0.5, 0.9, 0.3, 0.5): 0.3,  # support below half the peak: no outline
    }
    for (t, b, left, r), value in boxes.items():
        heatmap[round(t * h) : round(b * h), round(left * w) : round(r * w)] = value
    outlines = map_outlines(heatmap)
    assert len(outlines) == 3
    total = float(np.clip(heatmap, 0, None).sum())
    tol = 0.5 + np.ceil(max(shape) / 512) / 2  # half a pixel of the scaled-down map, whose step is 1 or 5
    for outline, ((t, b, left, r), value) in zip(outlines, list(boxes.items())[:3], strict=True):
        assert (outline.points[0] == outline.points[-1]).all()  # closed
        assert outline.points.min(axis=0) == pytest.approx([left * w, t * h], abs=tol)  # (column, row)
        assert outline.points.max(axis=0) == pytest.approx([r * w, b * h], abs=tol)
        expected = value * round((b - t) * h) * round((r - left) * w) / total
        assert outline.share == pytest.approx(expected, rel=0.05)
    assert map_outlines(np.full(shape, -0.5, np.float32)) == [] and map_outlines(np.zeros(shape)) == []
