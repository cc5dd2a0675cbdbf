"""Exposure balancing (training.exposure): hand-computed weights, lung medians of real films, config and fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import real_images, train_cli
from pneumolens.config import resolve_config
from pneumolens.data.sources import Sample
from pneumolens.training.exposure import MAX_FACTOR, exposure_weights, lung_medians


def _films(normal: list[float], pneumonia: list[float]) -> tuple[list[Sample], dict[str, float]]:
    samples = [Sample(f"n{i}", 0, f"n{i}") for i in range(len(normal))]
    samples += [Sample(f"p{i}", 1, f"p{i}") for i in range(len(pneumonia))]
    return samples, {s.path: m for s, m in zip(samples, normal + pneumonia, strict=True)}


def test_two_bins_by_hand():
    # pooled edge 0.5: normals 3 dark + 1 grey, pneumonia 1 dark + 3 grey; pooled 1/2 and 1/2 per bin,
    # so a film in its class's rarer bin gets (1/2) / (1/4) = 2 and the others (1/2) / (3/4) = 2/3 (mean 1)
    samples, medians = _films([0.1, 0.2, 0.3, 0.9], [0.6, 0.7, 0.8, 0.4])
    w = exposure_weights(samples, medians, strength=1.0, bins=2)
    assert [w[f"n{i}"] for i in range(4)] == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2])
    assert [w[f"p{i}"] for i in range(4)] == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2])


def test_half_strength_is_the_square_root_renormalised():
    samples, medians = _films([0.1, 0.2, 0.3, 0.9], [0.6, 0.7, 0.8, 0.4])
    w = exposure_weights(samples, medians, strength=0.5, bins=2)
    raw = np.array([(2 / 3) ** 0.5] * 3 + [2**0.5])
    assert [w[f"n{i}"] for i in range(4)] == pytest.approx(list(raw / raw.mean()))


def test_each_class_gets_the_pooled_distribution_and_keeps_its_weight():
    rng = np.random.default_rng(0)
    normal = list(rng.beta(4, 6, 300))  # darker lungs
    pneumonia = list(rng.beta(6, 5, 900))  # greyer lungs
    samples, medians = _films(normal, pneumonia)
    w = exposure_weights(samples, medians, strength=1.0, bins=5)
    values = np.array(normal + pneumonia)
    edges = np.quantile(values, [0.2, 0.4, 0.6, 0.8])
    for prefix, vals in (("n", normal), ("p", pneumonia)):
        weights = np.array([w[f"{prefix}{i}"] for i in range(len(vals))])
        assert weights.mean() == pytest.approx(1.0)
        mass = np.bincount(np.searchsorted(edges, vals, side="right"), weights=weights, minlength=5) / weights.sum()
        assert mass == pytest.approx([0.2] * 5, abs=1e-9)
    # and the unweighted shares were far from it: the test would pass for no weighting otherwise
    assert np.mean(np.array(normal) > edges[-1]) < 0.1


def test_the_factor_is_capped_and_films_without_a_median_keep_one():
    samples, medians = _films([0.1] * 199 + [0.9], [0.9] * 200)
    samples.append(Sample("unread", 0, "u"))
    w = exposure_weights(samples, medians, strength=1.0, bins=2)
    normal = np.array([w[f"n{i}"] for i in range(200)])
    # the grey normal's ratio (201/400) / (1/200) = 100.5 is cut to MAX_FACTOR; the dark ones' is 1/2
    assert normal.max() / normal.min() == pytest.approx(MAX_FACTOR / 0.5)
    assert w["unread"] == 1.0
    assert exposure_weights(samples, medians, strength=0.0) == dict.fromkeys(w, 1.0)
    with pytest.raises(ValueError, match="exposure_balance"):
        exposure_weights(samples, medians, strength=1.5)


def test_lung_medians_of_real_films(tmp_path):
    film = real_images("train", "NORMAL", 1)[0]
    gray = np.asarray(Image.open(film).convert("L"), dtype=np.float32) / 255
    brighter = tmp_path / "brighter.png"  # the same film with greyer lungs (gamma 0.6 lifts the darks)
    Image.fromarray((255 * gray**0.6).round().astype(np.uint8)).save(brighter)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    samples = [Sample(str(film), 0, "a"), Sample(str(brighter), 0, "a"), Sample(str(broken), 0, "b")]
    medians = lung_medians(samples, num_workers=0)
    assert set(medians) == {str(film), str(brighter)}
    assert 0.2 < medians[str(film)] < medians[str(brighter)] < 1


def test_config_checks():
    assert resolve_config("default", exposure_balance=0.5).exposure_balance == 0.5
    with pytest.raises(ValueError, match="exposure_balance must be in"):
        resolve_config("default", exposure_balance=1.5)
    with pytest.raises(ValueError, match="group_dro and exposure_balance"):
        resolve_config("default", exposure_balance=1.0, group_dro=0.01, class_weights="none")


def test_train_weights_the_training_films(tiny_data, tmp_path, monkeypatch):
    seen = {}

    def recording(samples, medians, strength):
        seen.update(paths={s.path for s in samples}, medians=medians, strength=strength)
        return exposure_weights(samples, medians, strength)

    monkeypatch.setattr("pneumolens.training.fit.exposure_weights", recording)
    assert train_cli(tiny_data, tmp_path / "run", "--exposure-balance", "0.5", "--num-workers", "0") == 0
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert seen["paths"] == set(split["train"]) and seen["strength"] == 0.5
    assert set(seen["medians"]) == set(split["train"])  # every tiny film is readable and has lungs
    assert json.loads((tmp_path / "run" / "config.json").read_text())["exposure_balance"] == 0.5
