"""``pneumolens selftest``: every part loads and the model's known answer for a synthetic film holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumolens.cli import main
from pneumolens.selftest import LOGIT_TOLERANCE, known_answers, phantom, run_checks


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path / 'audit.sqlite'}"


def _by_name(checks):
    return {c.name: c for c in checks}


def test_the_shipped_installation_passes_every_check(db, capsys):
    assert main(["selftest", "--db", db, "--json"]) == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert all(c["status"] == "ok" for c in checks.values()), checks
    assert "as recorded" in checks["known answer"]["detail"]
    assert "test accuracy 94.7% on 624 films recorded" in checks["recorded test figures"]["detail"]
    assert "all 13 transfer syntaxes" in checks["DICOM decoders"]["detail"]
    film = phantom()
    assert film.shape == (512, 448) and film.dtype == np.float32 and 0 <= film.min() < film.max() <= 1
    assert np.array_equal(film, phantom())  # no random generator: the same film on every call


def test_a_changed_preprocessing_step_fails_the_known_answer(db, monkeypatch, capsys):
    """CLAHE that does nothing (a broken scikit-image, say) reads the phantom differently: caught."""
    import skimage.exposure

    monkeypatch.setattr(skimage.exposure, "equalize_adapthist", lambda image, **kwargs: image)
    assert main(["selftest", "--db", db]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("known answer"))
    assert "FAILED" in line and "this installation reads films differently" in line
    assert "9 of 10 checks passed or do not apply; 1 failed" in out


def test_a_changed_dicom_reader_fails_the_round_trip(db, monkeypatch):
    """A DICOM reader that no longer windows a film without a window by its range (here: by its bits)."""
    import pneumolens.data.dicom

    assert _by_name(run_checks(None, db))["DICOM reading"].ok
    monkeypatch.setattr(pneumolens.data.dicom, "stretch", lambda ds, values: (0.0, 4095.0))
    check = _by_name(run_checks(None, db))["DICOM reading"]
    assert check.ok is False and "the DICOM reader changed" in check.detail


def test_answers_recorded_for_another_model_are_checked(trained_run, db, tmp_path, capsys, monkeypatch):
    model = ["--model", str(trained_run), "--db", db]
    checks = _by_name(run_checks(str(trained_run), db))
    assert checks["known answer"].ok is None and "no answer recorded" in checks["known answer"].detail
    assert checks["recorded test figures"].ok is None and checks["model"].ok
    answers = tmp_path / "answers.json"
    assert main(["selftest", *model, "--record", str(answers)]) == 0
    recorded = known_answers(answers)
    assert len(recorded) == 1 and next(iter(recorded.values()))["label"] in ("NORMAL", "PNEUMONIA")
    assert main(["selftest", *model, "--answers", str(answers)]) == 0
    capsys.readouterr()
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    monkeypatch.setenv("PNEUMOLENS_SELFTEST_ANSWERS", str(answers))  # a site's own answers, at start too
    assert Engine(Settings(model=str(trained_run), audit=False)).known_answer == "as recorded"
    assert main(["selftest", *model]) == 0
    monkeypatch.delenv("PNEUMOLENS_SELFTEST_ANSWERS")
    capsys.readouterr()
    ((sha, answer),) = recorded.items()
    answer["logit"] += 2 * LOGIT_TOLERANCE
    answers.write_text(json.dumps({sha: answer}))
    assert main(["selftest", *model, "--answers", str(answers)]) == 1
    assert "logit off by 0.1000, allowed 0.05" in capsys.readouterr().out


def test_a_model_that_does_not_load_fails_and_its_checks_are_skipped(db, tmp_path):
    checks = _by_name(run_checks(str(tmp_path / "nowhere"), db))
    assert checks["model"].ok is False and "no model file found" in checks["model"].detail
    assert all(checks[n].ok is None for n in ("recorded test figures", "known answer", "ONNX export"))
    assert checks["DICOM decoders"].ok and checks["audit trail"].ok  # the rest still checked


def test_serve_listen_and_watch_do_not_start_on_an_installation_that_reads_otherwise(
    trained_run, tmp_path, monkeypatch, capsys
):
    """The engine behind serve, listen and watch checks the known answer at its start (no map): as
    recorded, or not recorded for a model of one's own; another answer stops the start, naming why."""
    import skimage.exposure
    from fastapi.testclient import TestClient

    from pneumolens.service.app import create_app
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    assert Engine(Settings(audit=False)).known_answer == "as recorded"
    assert Engine(Settings(audit=False, backend="onnx")).known_answer == "as recorded"
    assert Engine(Settings(model=str(trained_run), audit=False)).known_answer == "not recorded"
    with TestClient(create_app(Settings(audit=False))) as client:
        assert client.get("/api/v1/model").json()["known_answer"] == "as recorded"
    monkeypatch.setattr(skimage.exposure, "equalize_adapthist", lambda image, **kwargs: image)
    with pytest.raises(ValueError, match="reads the self-test film otherwise than recorded .* not started"):
        Engine(Settings(audit=False))
    folder = tmp_path / "in"
    folder.mkdir()
    assert main(["watch", str(folder), "--once", "--db", f"sqlite:///{tmp_path / 'a.sqlite'}"]) == 2
    assert "run `pneumolens selftest`, and reinstall" in capsys.readouterr().err
