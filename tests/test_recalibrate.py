"""Site recalibration (``pneumolens calibrate``) on real films, against an independent computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from conftest import PATIENT_ID, PATIENT_NAME, make_dicom, real_images
from pneumolens.checkpoint import load_model, save_model, shipped_model_path
from pneumolens.cli import main
from pneumolens.config import CLASS_NAMES
from pneumolens.data.sources import list_folder
from pneumolens.evaluation.calibration import choose_threshold, fit_temperature
from pneumolens.evaluation.recalibrate import recalibrate
from pneumolens.evaluation.selective import band_for_risk, distance, in_band
from pneumolens.inference import predict_samples
from pneumolens.service.app import create_app
from pneumolens.service.settings import Settings


def site(root: Path, normal: int, pneumonia: int) -> Path:
    """A site's labelled films: symlinks to real test films (these tests choose nothing)."""
    for label, n in zip(CLASS_NAMES, (normal, pneumonia), strict=True):
        (root / label).mkdir(parents=True)
        for f in real_images("test", label, n):
            (root / label / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module")
def shipped():
    return load_model(None)


def test_calibrate_refits_the_operating_point_and_records_it(shipped, tmp_path, capsys):
    data = site(tmp_path / "site", 30, 30)
    (data / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    # a site sends DICOM: one more normal film, as a DX file with a patient name and ID
    extra = real_images("test", "NORMAL", 31)[-1]
    make_dicom(data / "NORMAL" / "study.dcm", np.asarray(Image.open(extra).convert("L")))
    out = tmp_path / "site.safetensors"
    policy = "sensitivity:0.9"
    rc = main(
        ["calibrate", "--data", str(data), "--out", str(out), "--policy", policy, "--json", str(tmp_path / "r.json")]
    )
    out_, err = capsys.readouterr()
    assert rc == 0, err
    assert "broken.jpeg" in err  # the unreadable film is named, and the others are used
    assert "borderline band: " in out_ and "holding 10.0% of these films" in out_  # the model's own share

    # the same numbers, computed independently from the shipped model's logits on the readable films
    samples = [s for s in list_folder(data) if not s.path.endswith("broken.jpeg")]
    logits, errors = predict_samples(shipped.model, samples, shipped.preprocess, logits=True)
    assert not errors
    y = np.array([s.label for s in samples])
    z = np.array([logits[s.path] for s in samples])
    t = fit_temperature(y, z)
    expected = choose_threshold(y, 1 / (1 + np.exp(-z / t)), policy)

    new = load_model(out)  # loads: format, version and weights hash verified
    record = new.meta["site_calibrations"][-1]
    assert record["temperature"] == pytest.approx(t, rel=1e-6)
    assert new.threshold == pytest.approx(expected, rel=1e-6)
    band = new.borderline  # the least sure calls around the new threshold, on the site's films
    assert band["n"] == 61 and band["low"] <= new.threshold <= band["high"] and band != shipped.borderline
    assert record["counts"] == {"NORMAL": 31, "PNEUMONIA": 30} and record["unreadable"] == 1
    assert record["parent"]["sha256"] == shipped.sha256 != new.sha256  # temperature folded into the weights
    assert record["site_metrics"]["sensitivity"] >= 0.9
    assert new.meta["name"] == shipped.meta["name"] + "-recalibrated"
    assert json.loads((tmp_path / "r.json").read_text())["threshold"] == pytest.approx(new.threshold)
    # the new network gives exactly the old logits divided by the temperature
    new_logits, _ = predict_samples(new.model, samples, new.preprocess, logits=True)
    assert np.allclose([new_logits[s.path] for s in samples], z / t, rtol=1e-4, atol=1e-4)
    # no file name of the site's films is stored in the model file
    header = json.dumps(new.meta)
    assert not any(Path(s.path).name in header for s in samples)
    assert PATIENT_NAME not in header and PATIENT_ID not in header

    # served, it says where its operating point came from, and decides at the new threshold
    with TestClient(create_app(Settings(model=str(out)))) as client:
        card = client.get("/api/v1/model").json()
        assert card["name"] == new.meta["name"] and card["threshold"] == new.threshold
        assert card["site_calibrations"][0]["parent"]["sha256"] == shipped.sha256
        film = samples[0].path
        r = client.post("/api/v1/predict", files={"file": (Path(film).name, Path(film).read_bytes())}).json()
        assert r["threshold"] == new.threshold and r["model"]["sha256"] == new.sha256
        assert r["borderline"] == [new.borderline["low"], new.borderline["high"]]  # the site's band, served
        assert r["label"] == ("PNEUMONIA" if r["probability"] >= new.threshold else "NORMAL")


def test_without_temperature_only_the_threshold_changes(shipped, tmp_path):
    data = site(tmp_path / "site", 30, 30)
    r = recalibrate(shipped, data, policy="specificity:0.9", temperature=False)
    assert r.report["temperature"] == 1.0
    for a, b in zip(r.model.state_dict().values(), shipped.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert r.report["after"]["specificity"] >= 0.9
    assert r.meta["threshold"] == r.report["threshold"] != shipped.threshold
    assert "site_calibrations" not in shipped.meta  # the parent is left as it was
    assert r.meta["borderline"]["share"] == shipped.borderline["share"] == 0.1  # the model's own share

    # a site that wants a second reader on more films: a band holding 30% of its films
    wide = recalibrate(shipped, data, policy="specificity:0.9", temperature=False, borderline_share=0.3)
    band = wide.meta["borderline"]
    assert band["share"] == 0.3 and wide.meta["threshold"] == r.meta["threshold"]
    films = list_folder(data)
    probs, _ = predict_samples(shipped.model, films, shipped.preprocess)  # temperature 1: the parent's
    inside = sum(in_band(probs[s.path], band) for s in films)
    assert abs(inside - 0.3 * len(films)) <= 1 and inside > sum(
        in_band(v, r.meta["borderline"]) for v in probs.values()
    )
    path = save_model(tmp_path / "wide.safetensors", wide.model, wide.meta)
    again = recalibrate(load_model(path), data, policy="specificity:0.9", temperature=False)
    assert again.meta["borderline"]["share"] == 0.3  # kept from the model recalibrated before

    # or by what the calls outside it may get wrong: the narrowest band leaving at most 2% errors outside
    risky = recalibrate(shipped, data, policy="specificity:0.9", temperature=False, borderline_risk=0.02)
    band, t = risky.meta["borderline"], risky.meta["threshold"]
    wrong = {s.path: (probs[s.path] >= t) != s.label for s in films}
    outside = [s.path for s in films if not in_band(probs[s.path], band)]
    assert band["risk"] == 0.02 and sum(wrong[f] for f in outside) <= 0.02 * len(outside)
    assert band["error_rate_outside"] == pytest.approx(sum(wrong[f] for f in outside) / len(outside))
    assert 0 < band["share"] < 0.2  # these films' 3 errors at 90% specificity need a band, and a narrow one
    # no narrower band would do: the film inside farthest from the threshold, let out, breaks the 2%
    last = max((f for f in probs if f not in outside), key=lambda f: distance([probs[f]], t)[0])
    assert sum(wrong[f] for f in [*outside, last]) > 0.02 * (len(outside) + 1)
    assert risky.report["borderline"] == band
    path = save_model(tmp_path / "risky.safetensors", risky.model, risky.meta)
    kept = recalibrate(load_model(path), data, policy="specificity:0.9", temperature=False).meta["borderline"]
    assert kept["risk"] == 0.02  # the model's own rule: its risk, not the share it came to
    # a rule bounded at a confidence keeps its confidence too, unless --confidence says otherwise
    bounded = {**risky.meta, "borderline": {**band, "risk": 0.02, "confidence": 0.5}}
    parent = load_model(save_model(tmp_path / "bounded.safetensors", risky.model, bounded))
    again = recalibrate(parent, data, policy="specificity:0.9", temperature=False).meta["borderline"]
    y, p = [s.label for s in films], [probs[s.path] for s in films]
    assert again == pytest.approx(band_for_risk(y, p, t, 0.02, confidence=0.5))
    assert again["share"] > band["share"]  # wider than the point estimate's band
    with pytest.raises(ValueError, match="give one"):
        recalibrate(shipped, data, borderline_share=0.2, borderline_risk=0.05)
    with pytest.raises(ValueError, match=r"site: no borderline band .* at most 0.1% .*--borderline-risk"):
        recalibrate(shipped, data, policy="specificity:0.9", temperature=False, borderline_risk=0.001, confidence=0.9)

    # with 95% confidence, 90% sensitivity on 30 positives needs all 30 caught (0.05 ** (1/30) = 0.905)
    sure = recalibrate(shipped, data, policy="sensitivity:0.9", confidence=0.95)
    assert sure.report["after"]["sensitivity"] == 1.0 and sure.report["confidence"] == 0.95
    with pytest.raises(ValueError, match="30 positive film.*needs at least 99"):
        recalibrate(shipped, data, policy="sensitivity:0.97", confidence=0.95)


def test_too_few_films_of_a_class_is_refused_and_nothing_written(tmp_path, capsys):
    data = site(tmp_path / "site", 30, 5)
    out = tmp_path / "site.safetensors"
    assert main(["calibrate", "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "5 PNEUMONIA" in err and "--min-per-class" in err and str(data) in err
    assert not out.exists()


def test_bad_arguments_are_refused_with_the_field_named(tmp_path, capsys):
    model = shipped_model_path()
    before = model.read_bytes()
    data = site(tmp_path / "site", 30, 30)
    cases = [
        (["--out", str(model)], "is the model being recalibrated"),
        (["--out", str(tmp_path / "m.pt")], ".safetensors"),
        (["--out", str(tmp_path / "x.safetensors"), "--policy", "fixed:0.5"], "fixes the threshold"),
        (["--out", str(tmp_path / "x.safetensors"), "--policy", "sensitivity"], "unknown threshold policy"),
    ]
    for extra, message in cases:
        assert main(["calibrate", "--data", str(data), *extra]) == 2
        assert message in capsys.readouterr().err
    z = ["calibrate", "--data", str(data), "--out", str(tmp_path / "z.safetensors")]
    with pytest.raises(SystemExit) as stop:  # argparse refuses it before anything is read
        main([*z, "--borderline-share", "1.5"])
    assert stop.value.code == 2 and "--borderline-share: must be a fraction between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main([*z, "--borderline-share", "0.2", "--borderline-risk", "0.02"])
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert main(["calibrate", "--data", str(tmp_path), "--out", str(tmp_path / "y.safetensors")]) == 2
    assert "no calibration/ folder and no class folders" in capsys.readouterr().err
    assert model.read_bytes() == before
    assert not list(tmp_path.glob("*.safetensors"))
