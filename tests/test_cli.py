"""End to end through the command line on a small real subset: train, evaluate, predict."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FULLRES, link_dataset, real_images, train_cli
from pneumolens.checkpoint import load_model
from pneumolens.cli import main
from pneumolens.config import CLASS_NAMES
from pneumolens.data.sources import patient_id

METRIC_KEYS = {
    "n",
    "accuracy",
    "sensitivity",
    "specificity",
    "false_positive_rate",
    "precision",
    "f1",
    "roc_auc",
    "threshold",
    "confusion_matrix",
}


def test_train_writes_a_self_describing_run(trained_run):
    assert {"model.safetensors", "config.json", "split.json", "val_metrics.json"} <= {
        p.name for p in trained_run.iterdir()
    }
    loaded = load_model(trained_run)
    meta = loaded.meta
    assert meta["architecture"]["name"] == "seed_cnn"
    pre = meta["preprocessing"]
    assert (pre["image_size"], pre["channels"], pre["interpolation"], pre["lungs"]) == (32, 3, "nearest", "none")
    assert meta["config"]["epochs"] == 2 and meta["config"]["class_weights"] == "seed"
    assert [h["epoch"] for h in meta["history"]] == [0, 1]
    assert {"train_loss", "val_loss", "train_acc", "val_acc"} <= set(meta["history"][0])
    split = json.loads((trained_run / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 80
    assert meta["metrics"]["val"]["n"] == len(split["val"])


def test_evaluate_json_and_report(trained_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    rc = main(
        [
            "evaluate",
            "--model",
            str(trained_run),
            "--data",
            str(tiny_data),
            "--json",
            str(out),
            "--report",
            str(tmp_path / "report"),
        ]
    )
    assert rc == 0
    m = json.loads(out.read_text())
    assert METRIC_KEYS <= set(m)
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    assert m["n"] == tn + fp + fn + tp == 24 and fn + tp == 12
    assert m["accuracy"] == pytest.approx((tn + tp) / 24)
    assert m["ci"]["accuracy"] is not None
    # intervals resample patients, counted from the file names
    names = list((tiny_data / "test").rglob("*.jpeg"))
    assert m["ci_resamples"] == "patients" and m["n_patients"] == len({patient_id(f) for f in names})
    for k, interval in m["ci"].items():  # bootstrap intervals hold their point estimate
        if interval is not None and m[k] is not None:
            assert interval[0] <= m[k] <= interval[1], k
    # subgroups from the Kaggle names: the two normal series and the two pneumonia kinds, summing to the classes
    sub = m["subgroups"]
    assert set(sub) == {"NORMAL/IM", "NORMAL/NORMAL2", "PNEUMONIA/bacteria", "PNEUMONIA/virus"}
    assert sub["NORMAL/IM"]["n"] + sub["NORMAL/NORMAL2"]["n"] == tn + fp
    assert sub["PNEUMONIA/bacteria"]["n"] + sub["PNEUMONIA/virus"]["n"] == fn + tp
    assert sub["NORMAL/IM"]["rate"] == "specificity" and sub["PNEUMONIA/virus"]["rate"] == "sensitivity"
    normal_right = sum(g["value"] * g["n"] for k, g in sub.items() if k.startswith("NORMAL/"))
    assert normal_right == pytest.approx(tn)
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "NORMAL/NORMAL2" in printed
    report = tmp_path / "report"
    html = (report / "index.html").read_text()
    figures = ("class_counts.png", "samples.png", "training_curves.png", "confusion_matrix.png", "roc_curve.png")
    for png in (*figures, "calibration.png", "decision_curve.png", "risk_coverage.png"):
        assert (report / png).stat().st_size > 1000 and png in html
    assert "does not make a diagnosis" in html and "PNEUMONIA/virus" in html
    # the errors, explained by occlusion (the default map), and the share of attribution on the lungs
    assert "Explanations of the errors (occlusion)" in html and (report / "errors_explained.png").stat().st_size > 1000
    lf = m["explanations"]["lung_fraction"]
    assert set(lf) == {"correct", "wrong", "tp", "tn", "fp", "fn"}
    assert sum(m["explanations"]["n"].values()) == 24


def test_evaluate_csv_has_a_row_per_film_and_names_copies(trained_run, tiny_data, tmp_path, capsys):
    """``--csv``: the outcomes add up to the table's confusion matrix, the flags are the films' own,
    and a film stored twice under two names points at its first copy."""
    data = tmp_path / "site"
    for f in (tiny_data / "test").rglob("*.jpeg"):
        (data / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, data / f.parent.name / f.name)
    first = sorted((data / "NORMAL").iterdir())[0]
    shutil.copy(first, data / "NORMAL" / "zz-the-same-film.jpeg")
    out, rows_csv = tmp_path / "m.json", tmp_path / "films" / "films.csv"
    assert (
        main(["evaluate", "--model", str(trained_run), "--data", str(data), "--json", str(out), "--csv", str(rows_csv)])
        == 0
    )
    m = json.loads(out.read_text())
    rows = list(csv.DictReader(rows_csv.open()))
    assert len(rows) == m["n"] == 25
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    assert [sum(r["outcome"] == o for r in rows) for o in ("TN", "FP", "FN", "TP")] == [tn, fp, fn, tp]
    for r in rows:
        called = float(r["probability"]) >= m["threshold"]
        assert r["call"] == ("PNEUMONIA" if called else "NORMAL") and r["label"] == Path(r["path"]).parent.name
    assert sum("grey_lungs" in r["flags"].split() for r in rows) == sum(
        c["n"] for k, c in m["caution"].items() if "without" not in k
    )
    copies = {Path(r["path"]).name: Path(r["copy_of"]).name for r in rows if r["copy_of"]}
    assert copies == {"zz-the-same-film.jpeg": first.name}


def test_evaluate_threshold_override(trained_run, tiny_data, tmp_path):
    for t, name in ((0.0, "lo"), (1.0, "hi")):
        main(
            [
                "evaluate",
                "--model",
                str(trained_run),
                "--data",
                str(tiny_data),
                "--threshold",
                str(t),
                "--json",
                str(tmp_path / f"{name}.json"),
            ]
        )
    lo = json.loads((tmp_path / "lo.json").read_text())
    hi = json.loads((tmp_path / "hi.json").read_text())
    assert lo["sensitivity"] == 1.0 and lo["specificity"] == 0.0
    assert hi["threshold"] == 1.0 and hi["sensitivity"] <= lo["sensitivity"]


def test_predict_json_lines_and_bad_file(trained_run, tmp_path, capsys):
    good = [sorted((FULLRES / "PNEUMONIA").iterdir())[0], real_images("test", "NORMAL", 1)[0]]
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(good[1].read_bytes()[:200])
    rc = main(["predict", *map(str, good), str(bad), "--model", str(trained_run / "model.safetensors"), "--json"])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert rc == 1  # one file failed; the others were still predicted
    assert [d["path"] for d in lines] == [str(p) for p in good] + [str(bad)]
    for d in lines[:2]:
        assert 0.0 <= d["probability"] <= 1.0 and d["label"] in CLASS_NAMES
    assert lines[2]["probability"] is None and "broken.jpeg" in captured.err
    assert "corrupt or truncated" in lines[2]["error"]


def test_wrong_layout_is_a_clear_error(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and str(tmp_path) in err and "expected a dataset root" in err
    rc = main(["evaluate", "--model", str(tmp_path / "nothing"), "--data", str(tmp_path)])
    assert rc == 2 and "no model file found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ('{"widthz": [8]}', "unexpected keyword argument 'widthz'"),
        ('{"widths": [8, 16]}', "one entry per stage"),
        ("[8, 16]", "must be a JSON object"),
        ("{widths: 8}", "not valid JSON"),
    ],
)
def test_bad_architecture_arguments_are_named_before_training(tmp_path, capsys, kwargs, message):
    try:
        rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--model-kwargs", kwargs])
    except SystemExit as e:  # argparse's own usage error
        rc = e.code
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing started


def test_training_skips_unreadable_files(tmp_path, caplog):
    data = link_dataset(tmp_path / "d", {"train": dict.fromkeys(CLASS_NAMES, 16)})
    src = real_images("train", "NORMAL", 1)[0].read_bytes()
    (data / "train" / "NORMAL" / "IM-9990-0001.jpeg").write_bytes(src[: len(src) // 3])  # header ok, data cut
    (data / "train" / "PNEUMONIA" / "person9991_virus_1.jpeg").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        rc = train_cli(data, tmp_path / "run", "--num-workers", "0", "--val-fraction", "0.25")
    assert rc == 0
    text = caplog.text
    assert "person9991_virus_1.jpeg" in text  # refused up front, by name
    meta = load_model(tmp_path / "run").meta
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert [u["path"] for u in split["unreadable"]] == [str(data / "train" / "PNEUMONIA" / "person9991_virus_1.jpeg")]
    # the truncated JPEG passes the header check and is dropped at load time, train or val side
    assert "IM-9990-0001.jpeg" in text and meta["training"]["unreadable_files"] == 2


def test_same_seed_same_weights_and_split_seed_shares_the_split(tiny_data, tmp_path):
    runs = []
    same = ("--seed", "5", "--split-seed", "5")  # the default preset fixes its split seed (42): set both here
    for name, seeds in (("a", same), ("b", same), ("c", ("--seed", "6", "--split-seed", "5"))):
        extra = ("--limit", "48", *seeds, "--num-workers", "0", "--val-fraction", "0.25")
        assert train_cli(tiny_data, tmp_path / name, *extra, preset="default") == 0
        runs.append(load_file(str(tmp_path / name / "model.safetensors")))
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    # another training seed on the same patient split: an ensemble member with the same validation set
    val = [json.loads((tmp_path / n / "split.json").read_text())["val"] for n in "ac"]
    assert val[0] == val[1] and len(val[0]) > 0
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_exclude_leaves_listed_files_out_of_training_only(tiny_data, tmp_path, capsys):
    from pneumolens.config import resolve_config
    from pneumolens.training.fit import training_split

    extra = ("--num-workers", "0", "--val-fraction", "0.25")
    missing = tmp_path / "nothing.txt"
    assert train_cli(tiny_data, tmp_path / "refused", "--exclude", str(missing), *extra) == 2
    assert "nothing.txt: cannot read the exclusion list" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()  # refused before any data was read or anything written

    cfg = resolve_config("seed", image_size=32, val_fraction=0.25)
    whole, _ = training_split(tiny_data, cfg)
    listed = [whole.train[0].path, whole.train[-1].path]  # one film of each class (the split is sorted by class)
    listing = tmp_path / "exclude.txt"
    listing.write_text("# suspected label errors\n" + "\n".join(listed) + "\n")
    assert train_cli(tiny_data, tmp_path / "run", "--exclude", str(listing), *extra) == 0
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert sorted(split["excluded"]) == sorted(listed)
    assert sorted(split["train"]) == sorted(s.path for s in whole.train if s.path not in listed)
    assert split["val"] == [s.path for s in whole.val]  # validation untouched: comparable with a run without it
    assert load_model(tmp_path / "run").meta["config"]["exclude"] == str(listing)


def test_evaluate_lists_unreadable_files(trained_run, tmp_path, capsys):
    data = link_dataset(tmp_path / "d", {"test": dict.fromkeys(CLASS_NAMES, 4)})
    (data / "test" / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    rc = main(["evaluate", "--model", str(trained_run), "--data", str(data), "--json", str(tmp_path / "m.json")])
    assert rc == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n"] == 8 and m["n_skipped"] == 1 and m["skipped"][0]["path"].endswith("IM-9999-0001.jpeg")
    assert "IM-9999-0001.jpeg" in capsys.readouterr().err


@pytest.mark.parametrize("unit", ["pneumolens-listen.service", "pneumolens-serve.service", "pneumolens-orders.service"])
def test_deploy_units_run_real_commands(unit):
    """The systemd units in deploy/ start pneumolens with flags its parser accepts."""
    import shlex

    from pneumolens.cli import build_parser

    text = (Path(__file__).parents[1] / "deploy" / unit).read_text().replace("\\\n", " ")
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[0].endswith("/bin/pneumolens")
    args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown flag
    assert args.command == unit.split("-")[1].split(".")[0]
    if args.command == "listen":
        assert args.tls_cert and args.tls_key and args.tls_ca and args.allow_aet
    if args.command == "orders":  # the RIS's orders come in over mutual TLS
        assert args.tls_cert and args.tls_key and args.tls_ca


DOCS = (
    "README.md",
    "docs/results.md",
    "docs/clinical-integration.md",
    "docs/tests.md",
    "docs/deploy.md",
    "docs/dicom-conformance.md",
    "docs/distributed.md",
    "docs/site-validation.md",
    "docs/structured-report.md",
    "src/pneumolens/assets/DEFAULT_MODEL_CARD.md",
)


def documented_flags(text: str) -> list[tuple[str, str]]:
    """(subcommand, flag) for every ``--flag`` written after ``pneumolens SUB`` in a code span or in the
    lines of a command synopsis (a line continuing one that starts with ``pneumolens``)."""
    import re

    pairs = []
    for span in re.findall(r"`(?:\.venv/bin/)?pneumolens ([a-z-]+)([^`]*)`", text.replace("\n", " ")):
        pairs += [(span[0], f) for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span[1])]
    sub = None
    for line in text.splitlines():  # the synopsis block: continuation lines are indented
        if m := re.match(r"pneumolens ([a-z-]+)", line):
            sub = m.group(1)
        elif not line.startswith(" "):
            sub = None
        if sub:
            pairs += [(sub, f) for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line)]
    return pairs


def test_every_documented_flag_is_one_the_command_accepts():
    """The README, the docs and the model card name no flag that their subcommand lacks."""
    import argparse
    from pathlib import Path

    from pneumolens.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    root = Path(__file__).parents[1]
    checked, unknown = 0, []
    for name in DOCS:
        for sub, flag in documented_flags((root / name).read_text()):
            assert sub in subs, f"{name}: `pneumolens {sub}` is not a subcommand"
            checked += 1
            if flag not in {o for a in subs[sub]._actions for o in a.option_strings}:
                unknown.append(f"{name}: pneumolens {sub} {flag}")
    assert checked > 100 and not unknown, unknown


def test_documented_flags_finds_a_flag_the_parser_lacks():
    text = "Run `pneumolens train --data D --no-such-flag 3` or\npneumolens predict IMAGE [--json]\n    [--csv F]\n--x"
    assert documented_flags(text) == [
        ("train", "--data"),
        ("train", "--no-such-flag"),
        ("predict", "--json"),
        ("predict", "--csv"),
    ]


def test_evaluate_on_the_validation_split_scores_the_films_the_model_was_validated_on(
    trained_run, tiny_data, tmp_path, capsys
):
    """``--split validation`` draws the model's own patient split again: the same films and figures
    as training recorded; another data root, a refit or a file without a config are refused by name."""
    import copy

    from conftest import SHARED
    from pneumolens.evaluation.evaluate import validation_films

    loaded = load_model(trained_run)
    out = tmp_path / "val.json"
    args = ["evaluate", "--model", str(trained_run), "--data", str(tiny_data), "--split", "validation"]
    assert main([*args, "--json", str(out)]) == 0
    assert "(the validation films)" in capsys.readouterr().out
    m, recorded = json.loads(out.read_text()), loaded.meta["metrics"]["val"]
    assert m["split"] == "validation" and m["n"] == recorded["n"] > 0
    assert m["accuracy"] == pytest.approx(recorded["accuracy"]) and m["roc_auc"] == pytest.approx(recorded["roc_auc"])
    split = json.loads((trained_run / "split.json").read_text())
    assert sorted(s.path for s in validation_films(loaded, tiny_data)) == sorted(split["val"])
    with pytest.raises(ValueError, match="give the data it was trained on"):
        validation_films(loaded, SHARED / "chest_xray")  # 746 validation films there, not the run's
    few = tmp_path / "few.csv"  # too few patients to carve any split: said as the wrong data, not a bare count
    few.write_text("path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(split["val"][:4])))
    with pytest.raises(ValueError, match=rf"validated on {recorded['n']} films, but .*few.csv cannot give them"):
        validation_films(loaded, few)
    refit = copy.copy(loaded)
    refit.meta = {**loaded.meta, "config": {**loaded.meta["config"], "refit": True}}
    with pytest.raises(ValueError, match="a refit trained on its validation films"):
        validation_films(refit, tiny_data)
    bare = copy.copy(loaded)
    bare.meta = {k: v for k, v in loaded.meta.items() if k != "config"}
    with pytest.raises(ValueError, match="no training config recorded"):
        validation_films(bare, tiny_data)


def test_serve_help_names_every_setting_the_environment_gives(capsys):
    """``serve --help`` lists the environment's settings: each field of the service's Settings and each
    variable the checks and the audit trail read, none that nothing reads."""
    import pneumolens
    from pneumolens.cli.clinical import SERVE_ENVIRONMENT
    from pneumolens.service.settings import Settings

    fields = {f"PNEUMOLENS_{name.upper()}" for name in Settings.model_fields}
    assert fields <= set(SERVE_ENVIRONMENT)
    sources = "".join(p.read_text() for p in Path(pneumolens.__file__).parent.rglob("*.py") if p.name != "clinical.py")
    read = {name for name in SERVE_ENVIRONMENT if name in sources or name in fields}
    assert read == set(SERVE_ENVIRONMENT)
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert all(name in said for name in SERVE_ENVIRONMENT) and "default 8000" in said


def test_lightning_s_lines_are_logged_once():
    """The ``lightning`` package gives its logger a handler when imported, after the command line has
    configured the root's: without ``configure_logging``'s care every Trainer line came out twice."""
    import subprocess
    import sys

    code = (
        "from pneumolens.cli import configure_logging\n"
        "configure_logging()\n"
        "from lightning.pytorch.utilities.rank_zero import rank_zero_info\n"
        "rank_zero_info('said once')\n"
    )
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stderr
    assert [line for line in err.splitlines() if "said once" in line] == ["INFO: said once"]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["serve", "--port", "99999"], "argument --port: must be a port, 1-65535, got 99999"),
        (["listen", "--port", "0"], "argument --port: must be a port, 1-65535, got 0"),
        (["listen", "--dicomweb-port", "70000"], "argument --dicomweb-port: must be a port, 1-65535"),
        (["watch", "in", "--poll", "0"], "argument --poll: must be a number of seconds above 0, got 0"),
        (["watch", "in", "--poll", "nan"], "argument --poll: must be a number of seconds above 0, got nan"),
        (["watch", "in", "--poll", "inf"], "argument --poll: must be a number of seconds above 0, got inf"),
    ],
)
def test_ports_and_poll_intervals_out_of_range_are_refused_by_name(argv, said, capsys):
    """Before, a port above 65535 reached the socket and ended in a traceback, and a poll of 0 or less
    spun the watch folder's loop without a pause."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and said in capsys.readouterr().err


def test_a_destination_s_port_out_of_range_is_refused_by_name():
    from pneumolens.integration.dicom_node import Destination

    assert Destination.parse("PACS@pacs.local:104").port == 104
    with pytest.raises(ValueError, match="--forward 'PACS@pacs.local:99999': expected AE_TITLE@host:port"):
        Destination.parse("PACS@pacs.local:99999")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["predict", "IMAGE", "--csv", "OUT"], "--csv"),
        (["evaluate", "--data", "DATA", "--json", "OUT"], "--json"),
        (["evaluate", "--data", "DATA", "--csv", "OUT"], "--csv"),
        (["evaluate", "--data", "DATA", "--report", "OUT"], "--report"),
        (["compare", "MODEL", "--data", "DATA", "--json", "OUT"], "--json"),
    ],
)
def test_an_output_that_cannot_be_written_is_said_before_the_work(trained_run, tiny_data, tmp_path, capsys, argv, flag):
    """Before, the films were all scored and the run then ended on the unwritable file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("a file, not a folder")
    out = blocker / "out"
    image = str(real_images("test", "NORMAL", 1)[0])
    given = {"IMAGE": image, "DATA": str(tiny_data), "MODEL": str(trained_run), "OUT": str(out)}
    assert main([given.get(a, a) for a in argv]) == 2
    assert f"{flag} {out}: cannot be written (a folder on its path is a file)" in capsys.readouterr().err
    assert main([given.get(a, a).replace("a-file/out", "a-file/x/y") for a in argv]) == 2  # deeper: the same
    assert "cannot be written (a folder on its path is a file)" in capsys.readouterr().err
    if argv[0] == "predict":  # a path that can be written: no empty file left by the check, the rows written
        fine = tmp_path / "new" / "p.csv"
        assert main(["predict", image, "--csv", str(fine), "--model", str(trained_run)]) == 0
        assert len(fine.read_text().splitlines()) == 2


def test_predict_writes_each_row_as_it_comes_and_keeps_them_when_stopped(trained_run, tmp_path, capsys, monkeypatch):
    """The CSV is ``FILE.partial`` until every file is in it; a stop (Ctrl-C) keeps the rows written so
    far there, where before every result was held until the end and a stop lost them all."""
    from pneumolens.inference import Predictor

    films = [str(p) for p in real_images("test", "NORMAL", 2) + real_images("test", "PNEUMONIA", 1)]
    target = tmp_path / "p.csv"
    model = ["--model", str(trained_run)]
    assert main(["predict", *films, "--csv", str(target), *model]) == 0
    rows = list(csv.DictReader(target.open()))
    assert [r["path"] for r in rows] == films and not (tmp_path / "p.csv.partial").exists()
    alone = Predictor.from_checkpoint(str(trained_run)).predict_paths(films, batch_size=1)
    assert [float(r["probability"]) for r in rows] == pytest.approx([p.probability for p in alone], abs=1e-6)

    iter_paths = Predictor.iter_paths

    def stopped_after_two(self, paths, *a, **k):
        for i, pred in enumerate(iter_paths(self, paths, *a, **k)):
            if i == 2:
                raise KeyboardInterrupt
            yield pred

    monkeypatch.setattr(Predictor, "iter_paths", stopped_after_two)
    stopped = tmp_path / "s.csv"
    assert main(["predict", *films, "--csv", str(stopped), *model]) == 130
    assert "the 2 row(s) written are kept in" in capsys.readouterr().err and not stopped.exists()
    kept = list(csv.DictReader((tmp_path / "s.csv.partial").open()))
    assert [r["path"] for r in kept] == films[:2]
