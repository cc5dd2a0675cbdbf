"""The web service through FastAPI's test client, real images, and every kind of bad upload."""

from __future__ import annotations

import base64
import csv
import io
import logging
import re

import numpy as np
import pydicom
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from test_images import png_claiming

import pneumolens
from conftest import PATIENT_ID, PATIENT_NAME, make_dicom, real_images
from pneumolens.checkpoint import load_model
from pneumolens.cli import main
from pneumolens.data.images import preprocess, read_image
from pneumolens.export import NO_SPINNING, OnnxModel, export_onnx
from pneumolens.service.app import create_app
from pneumolens.service.settings import Settings


@pytest.fixture(scope="module")
def client(trained_run):
    with TestClient(create_app(Settings(model=str(trained_run), max_upload_mb=2))) as c:
        yield c


def jpeg_bytes(label: str = "PNEUMONIA") -> bytes:
    return real_images("test", label, 1)[0].read_bytes()


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.open(real_images("test", "NORMAL", 1)[0]).save(buf, "PNG")
    return buf.getvalue()


def post(client, data: bytes, name: str = "x.jpeg", field: str = "file", **params):
    return client.post("/api/v1/predict", files={field: (name, data)}, params=params)


def test_health_model_docs_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    card = client.get("/api/v1/model").json()
    assert card["name"] == "pneumolens-seed" and "threshold" in card and len(card["sha256"]) == 64
    assert client.get("/docs").status_code == 200
    page = client.get("/").text
    assert "does not replace" in page and "does not make a diagnosis" in page
    assert not re.search(r"""(src|href)=["']https?://""", page)  # nothing from a CDN
    assert "recorded_test_metrics" not in card  # a model of its own: no figures measured on another
    markdown = client.get("/api/v1/model/card")  # the full card, as `pneumolens card` writes it
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text.startswith("# Model card: pneumolens-seed") and card["sha256"] in markdown.text


def test_the_shipped_models_card_carries_its_recorded_test_figures(tmp_path):
    """The card shows the test figures recorded for the shipped weights (rates, ROC-AUC, intervals),
    and says what the model learnt from and was tested on; a copy of the file elsewhere is the same
    model, a file with any other weights gets none (``test_health_model_docs_and_page``)."""
    import json
    import shutil

    from pneumolens.checkpoint import shipped_model_path

    record = json.loads(shipped_model_path().with_name("default_test_metrics.json").read_text())
    with TestClient(create_app(Settings())) as c:
        card = c.get("/api/v1/model").json()
    test = card["recorded_test_metrics"]
    assert {k: test[k] for k in ("n", "accuracy", "sensitivity", "specificity", "roc_auc", "threshold")} == {
        k: record[k] for k in ("n", "accuracy", "sensitivity", "specificity", "roc_auc", "threshold")
    }
    assert test["ci"]["specificity"] == record["ci"]["specificity"] and test["n_patients"] == record["n_patients"]
    assert test["confusion_matrix"] == record["confusion_matrix"] and test["threshold"] == card["threshold"]
    assert "children" in test["trained_on"] and "one hospital" in test["trained_on"] and test["tested_on"]
    se, sp = record["sensitivity"], record["specificity"]  # where pneumonia is rarer: Bayes by hand
    for r in test["at_prevalence"]:
        q = r["prevalence"]
        assert r["ppv"] == pytest.approx(se * q / (se * q + (1 - sp) * (1 - q)))
        assert r["npv"] == pytest.approx(sp * (1 - q) / (sp * (1 - q) + (1 - se) * q))
    assert [r["prevalence"] for r in test["at_prevalence"]] == [0.05, 0.15, 0.3] and test["n_positive_share"] == 0.625
    copy = tmp_path / "renamed.safetensors"
    shutil.copy(shipped_model_path(), copy)
    with TestClient(create_app(Settings(model=str(copy)))) as c:
        assert c.get("/api/v1/model").json()["recorded_test_metrics"] == test


def test_predict_with_heatmap(client):
    r = post(client, jpeg_bytes())
    assert r.status_code == 200, r.text
    d = r.json()
    assert 0 <= d["probability"] <= 1 and d["label"] in ("NORMAL", "PNEUMONIA")
    assert d["model"]["name"] == "pneumolens-seed" and d["threshold"] == pytest.approx(0.5)
    png = Image.open(io.BytesIO(base64.b64decode(d["heatmap_png"])))
    assert png.format == "PNG" and png.width >= 224
    assert d["method"] == "occlusion" and "not a diagnosis" in d["notice"]  # the faithful map by default
    lime = post(client, jpeg_bytes(), method="lime").json()
    assert lime["method"] == "lime" and lime["probability"] == pytest.approx(d["probability"], abs=1e-6)
    plain = post(client, jpeg_bytes(), explain="false").json()
    assert plain["heatmap_png"] is None and plain["probability"] == pytest.approx(d["probability"], abs=1e-6)
    assert plain["regions"] == [] and 1 <= len(d["regions"]) <= 3  # the map's outlines, with a map only
    side = Image.open(io.BytesIO(jpeg_bytes())).size
    assert d["read_box"] == [0, 0, *side]  # the seed preset reads the whole image
    for region in d["regions"]:
        points = np.array(region["points"])
        assert (points[0] == points[-1]).all() and 0 < region["share"] <= 1  # closed, on the uploaded image
        assert (points >= 0).all() and (points <= side).all()
    assert [r["share"] for r in d["regions"]] == sorted((r["share"] for r in d["regions"]), reverse=True)


def test_predict_dicom_upload_leaks_no_identifier(client, tmp_path, caplog):
    gray = read_image(real_images("test", "NORMAL", 1)[0])
    p = make_dicom(tmp_path / "s.dcm", np.round((1 - gray) * 4095).astype(np.uint16), "MONOCHROME1")
    with caplog.at_level(logging.DEBUG):
        r = post(client, p.read_bytes(), name="s.dcm")
        broken = post(client, p.read_bytes()[:1500], name="cut.dcm")  # a refusal must not echo the header
    assert r.status_code == 200, r.text
    assert broken.status_code == 400
    lateral = pydicom.dcmread(p)
    lateral.ViewPosition = "LL"  # the study's lateral view: well formed, and not what the model is for
    lateral.save_as(tmp_path / "lateral.dcm")
    other = post(client, (tmp_path / "lateral.dcm").read_bytes(), name="lateral.dcm")
    assert other.status_code == 422 and "lateral.dcm: not a frontal view (View Position LL)" in other.text
    for text in (r.text, broken.text, other.text, caplog.text):
        assert PATIENT_NAME not in text and PATIENT_ID not in text and "Testperson" not in text
    # for a browser, which cannot decode DICOM: the image as read, light lungs dark (MONOCHROME1), and
    # the grid the regions are drawn in
    d = r.json()
    assert d["image_size"] == [gray.shape[1], gray.shape[0]] and d["image_png"] is None
    shown = post(client, p.read_bytes(), name="s.dcm", image="true").json()
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown["image_png"]))), dtype=np.float64) / 255
    assert png.shape == gray.shape  # 224 px: under the 1,024-px cap, kept as it is
    assert np.abs(png - read_image(p)).max() <= 0.5 / 255 + 1e-6  # what the model read, to 8 bits
    assert np.corrcoef(png.ravel(), gray.ravel())[0, 1] > 0.99  # the film the right way up: not inverted
    assert shown["probability"] == pytest.approx(d["probability"], abs=1e-6)


def test_image_preview_is_capped_and_keeps_the_aspect_ratio():
    from pneumolens.service.engine import PREVIEW_SIDE, preview_png

    wide = np.tile(np.linspace(0, 1, 3000), (1200, 1))  # (1200, 3000)
    png = Image.open(io.BytesIO(base64.b64decode(preview_png(wide))))
    assert (png.mode, png.size) == ("L", (PREVIEW_SIDE, round(1200 * PREVIEW_SIDE / 3000)))
    row = np.asarray(png, dtype=np.float64)[png.height // 2] / 255
    assert row[0] < 0.01 and row[-1] > 0.99 and (np.diff(row) >= -1 / 255).all()  # the same ramp, scaled


@pytest.mark.parametrize(
    "data, name, field, status, says",
    [
        (b"hello, not an image", "notes.jpeg", "file", 400, "notes.jpeg: not a JPEG, PNG, TIFF or DICOM"),
        (b"", "empty.png", "file", 400, "empty"),
        (b"\xff\xd8\xff", "x.jpeg", "image", 422, "field 'file'"),
        (png_claiming(50_000, 50_000), "bomb.png", "file", 400, "refused before decoding"),
        (jpeg_bytes()[:3000], "cut.jpeg", "file", 400, "cut.jpeg: corrupt or truncated"),
        (png_bytes()[:5000], "cut.png", "file", 400, "cut.png: corrupt or truncated"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00garbage" * 20, "broken.dcm", "file", 400, "broken.dcm"),
        (b"\0" * (3 * 1024 * 1024), "huge.png", "file", 413, "limit"),
    ],
)
def test_bad_uploads_get_a_clear_4xx_and_the_server_keeps_serving(client, data, name, field, status, says):
    r = post(client, data, name=name, field=field)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]
    assert post(client, jpeg_bytes(), explain="false").status_code == 200


def test_unknown_method_lists_valid(client):
    r = post(client, jpeg_bytes(), method="shap")
    assert r.status_code == 422 and "valid: gradcam, lime, occlusion" in r.json()["detail"]


def test_onnx_agrees_with_torch_on_real_images(trained_run, tmp_path):
    loaded = load_model(trained_run)
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(trained_run), "--out", str(out)]) == 0
    onnx = OnnxModel(out)
    paths = real_images("test", "NORMAL", 4) + real_images("test", "PNEUMONIA", 4)
    x = np.stack([preprocess(read_image(p), loaded.preprocess) for p in paths])
    with torch.inference_mode():
        p_torch = torch.sigmoid(loaded.model(torch.from_numpy(x))).numpy()
    p_onnx = 1 / (1 + np.exp(-onnx.logits(x)))
    assert np.abs(p_torch - p_onnx).max() < 1e-4
    options = onnx.session.get_session_options()  # its threads must not spin against torch's (export.py)
    assert [options.get_session_config_entry(k) for k in NO_SPINNING] == ["0", "0"]
    export_onnx(loaded, out)  # overwriting an export is atomic and fine


def test_service_on_the_onnx_backend(trained_run, client):
    with TestClient(create_app(Settings(model=str(trained_run), backend="onnx"))) as onnx_client:
        a = post(onnx_client, jpeg_bytes(), explain="false").json()
    b = post(client, jpeg_bytes(), explain="false").json()
    assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_batch_predict_to_csv(trained_run, tmp_path):
    folder = tmp_path / "archive" / "sub"
    folder.mkdir(parents=True)
    for i, p in enumerate(real_images("test", "NORMAL", 3)):
        (folder / f"ok{i}.jpeg").write_bytes(p.read_bytes())
    (folder / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(tmp_path / "archive"), "--model", str(trained_run), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["bad.png", "ok0.jpeg", "ok1.jpeg", "ok2.jpeg"]
    assert rows[0]["error"] and not rows[0]["probability"]
    assert all(0 <= float(r["probability"]) <= 1 and not r["error"] for r in rows[1:])
    # the measures behind the flags, the same as the Python API's for the same film
    api = pneumolens.load(trained_run).predict(str(folder / "ok1.jpeg"))
    assert rows[0]["lung_median"] == "" and rows[0]["detail"] == ""
    for name in ("lung_area", "lung_median", "noise", "detail"):
        assert float(rows[2][name]) == pytest.approx(api.measures[name], rel=1e-4), name


def test_api_token_guards_api_not_health(trained_run, monkeypatch):
    monkeypatch.setenv("PNEUMOLENS_API_TOKEN", "s3cret-token")
    with TestClient(create_app(Settings(model=str(trained_run)))) as c:
        assert c.get("/healthz").status_code == 200  # probes need no token
        assert c.get("/").status_code == 200  # the page asks for the token itself
        r = c.get("/api/v1/model")
        assert r.status_code == 401 and "API token" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/api/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/v1/model/card").status_code == 401  # the full card too
        assert post(c, jpeg_bytes(), explain="false").status_code == 401
        ok = c.post(
            "/api/v1/predict",
            files={"file": ("x.jpeg", jpeg_bytes())},
            params={"explain": "false"},
            headers={"Authorization": "Bearer s3cret-token"},
        )
        assert ok.status_code == 200 and 0 <= ok.json()["probability"] <= 1


def test_cors_closed_by_default_and_opened_only_for_listed_origins(trained_run, client):
    evil = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = client.options("/api/v1/predict", headers=evil)
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in client.get("/api/v1/model", headers=evil).headers
    settings = Settings(model=str(trained_run), cors_origins=["https://viewer.hospital.example"])
    with TestClient(create_app(settings)) as c:
        good = {"Origin": "https://viewer.hospital.example", "Access-Control-Request-Method": "POST"}
        assert c.options("/api/v1/predict", headers=good).headers["access-control-allow-origin"] == good["Origin"]
        assert "access-control-allow-origin" not in c.options("/api/v1/predict", headers=evil).headers


def test_slow_prediction_is_answered_504_and_the_server_goes_on(trained_run, monkeypatch):
    from pneumolens.service.engine import Engine

    real = Engine.predict
    calls, finished = [], []

    def slow_once(self, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            import time

            time.sleep(1.5)
        result = real(self, *a, **k)
        finished.append(1)
        return result

    monkeypatch.setattr(Engine, "predict", slow_once)
    with TestClient(create_app(Settings(model=str(trained_run), request_timeout_s=0.5))) as c:
        r = post(c, jpeg_bytes(), explain="false")
        assert r.status_code == 504 and "longer than 0.5 s" in r.json()["detail"]
        assert post(c, jpeg_bytes(), explain="false").status_code == 200
    # shutdown waited for the prediction answered 504: no thread is left inside the model at exit
    assert len(finished) == 2


def test_the_picture_is_drawn_once_and_encoded_only_when_asked(trained_run):
    """analyse gives the API's heatmap PNG from the explanation's own picture (the one the DICOM
    node puts in its Secondary Capture), and none with heatmap_png=False, the node's way."""
    from pneumolens.service.engine import Engine

    engine = Engine(Settings(model=str(trained_run), audit=False))
    gray = read_image(real_images("test", "PNEUMONIA", 1)[0])
    shown = engine.analyse(gray, explain=True, method="gradcam")
    picture = shown["explanation"].picture
    assert picture is shown["explanation"].picture  # cached: drawn once
    sent = Image.open(io.BytesIO(base64.b64decode(shown["heatmap_png"])))
    assert sent.size == picture.size and np.array_equal(np.asarray(sent.convert("RGB")), np.asarray(picture))
    quiet = engine.analyse(gray, explain=True, method="gradcam", heatmap_png=False)
    assert quiet["heatmap_png"] is None and quiet["explanation"] is not None
    assert quiet["probability"] == shown["probability"] and quiet["regions"] == shown["regions"]


def test_the_map_explains_the_call_made_without_scoring_the_film_again(trained_run, monkeypatch):
    """analyse and Model.predict hand explain_image the input, probability and flags they computed:
    the map is the one explain_image makes on its own, no second preprocessing, forward pass or
    film check runs, and the explanation's probability, label and flags (on its picture) are the
    call's (the ONNX backend's, a batch's, the DICOM header's flags included)."""
    import pneumolens.explain.explainer as explainer
    from pneumolens.api import Model
    from pneumolens.service.engine import Engine

    loaded = load_model(trained_run)
    grays = [read_image(p) for p in real_images("test", "PNEUMONIA", 1) + real_images("test", "NORMAL", 1)]
    alone = [explainer.explain_image(loaded, g, "gradcam") for g in grays]

    def refused(*args, **kwargs):
        raise AssertionError("preprocessed a second time")

    monkeypatch.setattr(explainer, "preprocess", refused)
    monkeypatch.setattr(explainer, "plausibility_flags", refused)
    engine = Engine(Settings(model=str(trained_run), audit=False))
    for g, e in zip(grays, alone, strict=True):
        shown = engine.analyse(
            g, explain=True, method="gradcam", heatmap_png=False, from_header=["older_than_training"]
        )
        assert np.allclose(shown["explanation"].heatmap, e.heatmap, atol=1e-5)
        assert shown["explanation"].probability == shown["probability"]
        assert abs(shown["probability"] - e.probability) < 1e-5
        assert shown["explanation"].flags == shown["flags"]  # the picture names what the answer names
        assert set(shown["flags"]) == {*e.flags, "older_than_training"}  # the header's flag as well
    onnx = Engine(Settings(model=str(trained_run), audit=False, backend="onnx"))
    shown = onnx.analyse(grays[0], explain=True, method="gradcam", heatmap_png=False)
    assert shown["explanation"].probability == shown["probability"]  # ONNX Runtime's, not torch's
    assert np.allclose(shown["explanation"].heatmap, alone[0].heatmap, atol=1e-5)
    results = Model(loaded).predict(grays, explain="gradcam", age=40)  # one batch, each film explained
    for r, e in zip(results, alone, strict=True):
        assert np.allclose(r.heatmap, e.heatmap, atol=1e-5) and r.label == e.label
        assert "older_than_training" in r.flags
    low, full = engine.segmenter.masks(grays[0])
    x = alone[0].model_input
    for p in (loaded.threshold + 1e-3, loaded.threshold - 1e-3):  # the call given decides the label and the map's sign
        e = explainer.explain_image(
            loaded, grays[0], "gradcam", lung_masks=(low, full), model_input=x, probability=p, flags=[]
        )
        assert (e.probability, e.label) == (p, "PNEUMONIA" if p >= loaded.threshold else "NORMAL")
    below = explainer.explain_image(
        loaded, grays[0], "gradcam", lung_masks=(low, full), model_input=x, probability=0.0, flags=[]
    )
    above = explainer.explain_image(
        loaded, grays[0], "gradcam", lung_masks=(low, full), model_input=x, probability=1.0, flags=[]
    )
    assert not np.allclose(below.heatmap, above.heatmap)  # the evidence for the other class


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("PNEUMOLENS_MAX_UPLOAD_MB", "-1", "max_upload_mb\n  Input should be greater than 0"),
        ("PNEUMOLENS_MAX_CONCURRENT", "0", "max_concurrent\n  Input should be greater than or equal to 1"),
        ("PNEUMOLENS_REQUEST_TIMEOUT_S", "0", "request_timeout_s\n  Input should be greater than 0"),
        ("PNEUMOLENS_SHUTDOWN_GRACE_S", "-5", "shutdown_grace_s\n  Input should be greater than or equal to 0"),
    ],
)
def test_settings_out_of_range_stop_serve_before_it_starts(monkeypatch, capsys, variable, value, said):
    """A negative upload limit used to start a server that refused every film (413), without a word."""
    import uvicorn

    monkeypatch.setenv(variable, value)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("serve started with " + variable))
    assert main(["serve", "--port", "8799"]) == 2
    assert said in capsys.readouterr().err
