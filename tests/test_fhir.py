"""The first read as a FHIR R4 Observation (``pneumolens.integration.fhir``; ``POST /api/v1/predict?format=fhir``,
``listen --fhir``), checked against the R4B models of fhir.resources."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from conftest import PATIENT_ID, PATIENT_NAME, make_dicom, real_images
from pneumolens.data.images import read_image
from pneumolens.integration.fhir import MEDIA_TYPE, observation, transaction
from pneumolens.service.app import create_app
from pneumolens.service.settings import Settings

MODEL = {"name": "pneumolens-default", "version": "9.9", "sha256": "ab" * 32}


@pytest.mark.parametrize(
    "probability, flags, code",
    [(0.4, [], "POS"), (0.39999, ["lungs_cut_off", "grey_lungs"], "NEG")],  # at the operating point: a call
)
def test_an_observation_says_what_the_model_said(probability, flags, code):
    result = {"probability": probability, "threshold": 0.4, "flags": flags, "model": MODEL}
    obs = Observation.model_validate(observation(result, "1.2.3.4", "1.2.3.4.5"))  # a valid R4B resource
    assert obs.status == "preliminary" and obs.code.coding[0].code == "233604007"
    assert float(obs.valueQuantity.value) == pytest.approx(probability) and obs.valueQuantity.code == "1"
    assert obs.interpretation[0].coding[0].code == code and float(obs.referenceRange[0].low.value) == 0.4
    assert "sha256:abababababab" in obs.method.text and obs.subject is None  # no patient named
    notes = " ".join(n.text for n in obs.note)
    assert "not a diagnosis" in notes and all(f in notes for f in flags)
    (study,) = obs.derivedFrom
    assert study.type == "ImagingStudy" and study.identifier.value == "urn:oid:1.2.3.4"
    assert "derivedFrom" not in observation(result)  # a JPEG: no DICOM study to point at


def test_a_report_carries_the_observation_and_says_the_call():
    positive = {"probability": 0.9, "threshold": 0.4, "flags": ["grey_lungs"], "model": MODEL}
    bundle = Bundle.model_validate(transaction(positive, "1.2.3.4.5", "1.2.3.4", "1.2.3.4.5"))  # valid R4B
    (obs_entry, report_entry) = bundle.entry
    obs, report = obs_entry.resource, report_entry.resource
    assert report.status == "preliminary" and report.code.coding[0].code == "18748-4"
    assert report.category[0].coding[0].code == "RAD" and report.subject is None  # no patient named
    assert report.result[0].reference == obs_entry.fullUrl == obs.identifier[0].value
    assert report.conclusionCode[0].coding[0].code == "233604007"
    assert "pneumonia suspected" in report.conclusion and "not a diagnosis" in report.conclusion
    assert "grey_lungs" in report.conclusion and report.imagingStudy[0].identifier.value == "urn:oid:1.2.3.4"
    for entry in bundle.entry:  # a conditional create on the resource's own identifier
        assert entry.request.method == "POST" and entry.request.ifNoneExist.endswith(entry.fullUrl)
        assert entry.resource.identifier[0].value == entry.fullUrl

    negative = transaction({**positive, "probability": 0.1}, "1.2.3.4.5")
    report = negative["entry"][1]["resource"]
    assert "conclusionCode" not in report and "imagingStudy" not in report and "no pneumonia" in report["conclusion"]
    same = [e["fullUrl"] for e in negative["entry"]]  # the same image and weights: the same identifiers
    assert same == [e.fullUrl for e in bundle.entry]
    other_model = transaction({**positive, "model": {**MODEL, "sha256": "ef" * 32}}, "1.2.3.4.5")
    other_image = transaction(positive, "1.2.3.4.6")
    assert not {e["fullUrl"] for e in other_model["entry"] + other_image["entry"]} & set(same)


def test_the_api_answers_with_an_observation(trained_run, tmp_path):
    gray = read_image(real_images("test", "NORMAL", 1)[0])
    path = make_dicom(tmp_path / "x.dcm", np.round((1 - gray) * 4095).astype(np.uint16), "MONOCHROME1")
    data, uid = path.read_bytes(), pydicom.dcmread(path).StudyInstanceUID
    with TestClient(create_app(Settings(model=str(trained_run), audit=False))) as client:
        plain = client.post("/api/v1/predict?explain=false", files={"file": ("x.dcm", data)}).json()
        r = client.post("/api/v1/predict?explain=false&format=fhir", files={"file": ("x.dcm", data)})
        assert r.status_code == 200 and r.headers["content-type"].startswith(MEDIA_TYPE)
        obs = Observation.model_validate(r.json())
        assert float(obs.valueQuantity.value) == pytest.approx(plain["probability"], abs=1e-6)
        assert obs.interpretation[0].coding[0].code == ("POS" if plain["label"] == "PNEUMONIA" else "NEG")
        assert obs.derivedFrom[0].identifier.value == f"urn:oid:{uid}"
        assert PATIENT_NAME not in r.text and PATIENT_ID not in r.text
        assert client.post("/api/v1/predict?format=xml", files={"file": ("x.dcm", data)}).status_code == 422
        r = client.post("/api/v1/predict?explain=false&format=fhir-bundle", files={"file": ("x.dcm", data)})
        bundle = Bundle.model_validate(r.json())
        assert r.headers["content-type"].startswith(MEDIA_TYPE) and bundle.type == "transaction"
        report = bundle.entry[1].resource
        assert report.imagingStudy[0].identifier.value == f"urn:oid:{uid}"
        assert ("conclusionCode" in r.text) == (plain["label"] == "PNEUMONIA")
        jpeg = real_images("test", "NORMAL", 1)[0].read_bytes()
        r = client.post("/api/v1/predict?explain=false&format=fhir-bundle", files={"file": ("x.jpeg", jpeg)})
        assert r.status_code == 200 and "imagingStudy" not in r.text  # no DICOM study behind a JPEG


def test_the_node_writes_an_observation_per_image(trained_run, tmp_path):
    from types import SimpleNamespace

    from pneumolens.integration.dicom_node import SUCCESS, Node
    from pneumolens.service.engine import Engine

    node = Node(Engine(Settings(model=str(trained_run))), None, tmp_path / "out", fhir=tmp_path / "fhir")
    node.out.mkdir()
    node.fhir.mkdir()
    pixels = np.round(read_image(real_images("test", "PNEUMONIA", 1)[0]) * 255).astype(np.uint8)
    sent = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels))
    assert node.handle_store(SimpleNamespace(dataset=sent, file_meta=sent.file_meta)) == SUCCESS
    (written,) = node.fhir.iterdir()
    assert written.name == f"{sent.SOPInstanceUID}.json"
    text = written.read_text()
    obs = Observation.model_validate(json.loads(text))
    assert obs.derivedFrom[0].identifier.value == f"urn:oid:{sent.StudyInstanceUID}"
    assert PATIENT_NAME not in text and PATIENT_ID not in text
