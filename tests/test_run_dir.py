"""A new run into a folder that holds an earlier one: refused by name, or replaced with --overwrite."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from conftest import train_cli
from pneumolens.checkpoint import ModelFileError, load_model
from pneumolens.cli import main
from pneumolens.training.run_dir import RunExists, earlier_run, make_room


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_finished_run_is_refused_and_kept(trained_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    before = {p.relative_to(out): _digest(p) for p in out.rglob("*") if p.is_file()}
    assert train_cli(tiny_data, out, "--num-workers", "0") == 2
    err = capsys.readouterr().err
    assert f"{out} holds a trained model (model.safetensors); train into another --out, or give --overwrite" in err
    assert {p.relative_to(out): _digest(p) for p in out.rglob("*") if p.is_file()} == before  # nothing touched


def test_overwrite_replaces_the_earlier_run_and_leaves_other_files(trained_run, tiny_data, tmp_path):
    """With --overwrite the new run's checkpoints are its own (before, Lightning saved them beside the
    old ones as ``last-v1.ckpt``, so that ``--resume`` went on from the earlier run's ``last.ckpt``)."""
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    (out / "checkpoints" / "epoch=9.ckpt").write_bytes(b"an earlier run's")
    (out / "test_metrics.json").write_text("{}")  # an evaluation's file: not training's, left
    old = _digest(out / "model.safetensors")
    assert train_cli(tiny_data, out, "--num-workers", "0", "--seed", "5", "--overwrite") == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert _digest(out / "model.safetensors") != old and (out / "test_metrics.json").read_text() == "{}"
    assert main(["train", "--resume", str(out), "--overwrite"]) == 2


def test_an_interrupted_run_is_refused_with_the_way_to_go_on(trained_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    (out / "model.safetensors").unlink()  # stopped before the end: checkpoints, no model
    assert earlier_run(out) == "interrupted"
    with pytest.raises(ModelFileError, match=rf"{out}: a run that has not finished .*`pneumolens train --resume "):
        load_model(out)  # what predict, evaluate and the rest say of it
    with pytest.raises(RunExists, match=rf"continue it with `pneumolens train --resume {out}`, or give --overwrite"):
        make_room(out, overwrite=False)
    for name in ("config.json", "split.json"):  # a run stopped before its first epoch left nothing of value
        assert earlier_run(tmp_path / "new") is None
        (tmp_path / "new").mkdir(exist_ok=True)
        (tmp_path / "new" / name).write_text("{}")
    assert earlier_run(tmp_path / "new") is None
    make_room(tmp_path / "new", overwrite=False)


def test_a_distributed_run_s_other_processes_find_the_folder_begun(trained_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    for env in ({"RANK": "1"}, {"LOCAL_RANK": "1"}, {"NODE_RANK": "1"}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            make_room(out, overwrite=False)  # not refused: rank 0 wrote what is there
            make_room(out, overwrite=True)  # and not removed either
        assert (out / "model.safetensors").is_file()
    with pytest.raises(RunExists):
        make_room(out, overwrite=False)


def test_a_run_that_reads_a_model_inside_its_out_is_refused_even_with_overwrite(trained_run, tmp_path):
    """``--overwrite`` into the folder of the run's own ``--init`` or ``--teacher`` would remove the
    model it is about to read."""
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    for inputs in ((("--init", str(out)),), (("--teacher", str(out / "model.safetensors")),)):
        flag, path = inputs[0]
        with pytest.raises(RunExists, match=rf"{flag} {path} lies in --out {out}, which holds an earlier run"):
            make_room(out, overwrite=True, inputs=inputs)
        assert (out / "model.safetensors").is_file()
    make_room(out, overwrite=True, inputs=(("--init", str(trained_run)),))  # a model elsewhere: room made
    assert earlier_run(out) is None
