"""Every entry point against the generated corpus of bad inputs (tests/bad_inputs.py).

Valid-but-awkward images (16-bit, RGBA, palette, CMYK, MONOCHROME1, a non-UTF-8 name) must give a
prediction; the others must be refused with a message naming the file, the rest still processed.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from fastapi.testclient import TestClient

from bad_inputs import EXPECTED, make_corpus
from conftest import real_images
from pneumolens.cli import main
from pneumolens.config import DEFAULT
from pneumolens.data.dataset import XrayDataset, collate_skipping_bad
from pneumolens.data.sources import Sample, check_headers
from pneumolens.service.app import create_app
from pneumolens.service.settings import Settings

VALID = sorted(n for n, why in EXPECTED.items() if why is None)
REFUSED = sorted(n for n, why in EXPECTED.items() if why is not None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "bad"
    return make_corpus(folder)


def test_dataset_loader_serves_valid_and_names_refused(corpus):
    samples = [Sample(str(corpus[n]), 0, n) for n in EXPECTED]
    items = [XrayDataset(samples, DEFAULT.preprocess)[i] for i in range(len(samples))]
    batch = collate_skipping_bad(items)
    assert sorted(os.path.basename(p) for p in batch["path"]) == VALID
    assert batch["image"].shape == (len(VALID), 1, 128, 128)
    assert (
        bool(batch["image"].isfinite().all()) and 0 <= float(batch["image"].min()) <= float(batch["image"].max()) <= 1
    )
    reasons = {os.path.basename(p): r for p, r in batch["skipped"]}
    for name in REFUSED:
        assert EXPECTED[name] in reasons[name], (name, reasons[name])
    # the up-front header check refuses the files whose header is wrong, and never crashes
    good, bad = check_headers(samples)
    assert {os.path.basename(s.path) for s in good} >= set(VALID)


def test_predict_cli_on_the_corpus_folder(corpus, trained_run, capsys):
    rc = main(["predict", str(corpus["gray16.png"].parent), "--model", str(trained_run), "--json"])
    out, err = capsys.readouterr()
    rows = {os.path.basename(r["path"]): r for r in map(json.loads, out.splitlines())}
    assert rc == 1  # some files failed, after every file was tried
    assert set(rows) == set(EXPECTED) | {"loop-b.jpeg"}  # the folder walk ends, loops included
    for name in VALID:
        assert 0 <= rows[name]["probability"] <= 1, name
    for name in REFUSED:
        assert rows[name]["probability"] is None and EXPECTED[name] in rows[name]["error"], name
        assert name.encode("ascii", "backslashreplace").decode() in err or name in err
    plain = main(["predict", str(corpus[VALID[-1]]), "--model", str(trained_run)])  # the non-UTF-8 name, printed
    assert plain == 0 and "\\udcff" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_explain_cli_each_file(corpus, trained_run, name, capsys):
    rc = main(["explain", str(corpus[name]), "--model", str(trained_run), "--json"])
    out, err = capsys.readouterr()
    if EXPECTED[name] is None:
        assert rc == 0 and 0 <= json.loads(out)["probability"] <= 1
    else:
        assert rc == 2 and EXPECTED[name] in err and "Traceback" not in err


def test_evaluate_skips_and_lists_refused(corpus, trained_run, tmp_path, capsys):
    data = tmp_path / "d" / "test"
    (data / "NORMAL").mkdir(parents=True)
    (data / "PNEUMONIA").mkdir()
    for name in EXPECTED:
        src = corpus[name]
        dst = data / "NORMAL" / os.path.basename(src)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copyfile(src, dst)
    os.symlink("loop-a.jpeg", data / "NORMAL" / "loop-b.jpeg")
    for f in real_images("test", "PNEUMONIA", 3):
        (data / "PNEUMONIA" / f.name).symlink_to(f)
    rc = main(
        ["evaluate", "--model", str(trained_run), "--data", str(tmp_path / "d"), "--json", str(tmp_path / "m.json")]
    )
    assert rc == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n"] == len(VALID) + 3
    skipped = {os.path.basename(s["path"]) for s in m["skipped"]}
    assert skipped == set(REFUSED) | {"loop-b.jpeg"}
    assert "Traceback" not in capsys.readouterr().err


def test_server_upload_of_each_file(corpus, trained_run):
    with TestClient(create_app(Settings(model=str(trained_run), max_upload_mb=2))) as client:
        for name in EXPECTED:
            if corpus[name].is_symlink():
                continue  # a client sends bytes, never a link
            upload = name.encode("utf-8", "surrogateescape").decode("latin-1")  # the name as a client sends it
            r = client.post(
                "/api/v1/predict", files={"file": (upload, corpus[name].read_bytes())}, params={"explain": "false"}
            )
            if EXPECTED[name] is None:
                assert r.status_code == 200 and 0 <= r.json()["probability"] <= 1, (name, r.text)
            else:
                expected = 422 if name == "lateral.dcm" else 400  # out of scope: a well-formed film of another view
                assert r.status_code in (expected, 413) and EXPECTED[name] in r.json()["detail"], (name, r.text)
        assert client.get("/healthz").json() == {"status": "ok"}
