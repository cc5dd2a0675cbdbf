"""The performance table of issue 7: train, data, inference and explanation speed for each preset.

    python benchmarks/run.py --data ../shared/data/chest_xray [--presets seed default] [--out runs/bench]
    python benchmarks/run.py --models src/pneumolens/assets/default.safetensors runs/v29/top3  # inference only

For each preset, in separate processes (so each peak RSS is its own):

* ``train``: trains from scratch with a cold preprocessing cache (a fresh cache directory), and after
  every epoch scores the *test* split at threshold 0.5 to find the time to 87% test accuracy. That
  score is only observed: the recipe, early stopping and checkpoint never see it. Its own time is not
  counted in the training wall time.
* ``infer``: single-image latency end to end (decode -> preprocess -> model -> probability), p50/p99,
  for torch and ONNX Runtime; batch-64 model throughput for both; a whole-folder ``predict`` run;
  the Python API's ``predict`` on a list of 128 files;
  Grad-CAM and LIME (1000 samples) seconds per image.
* ``data`` (once): decode+preprocess throughput against cached reads, on full-resolution JPEGs
  and on the 224-px set.

With ``--models``, only ``infer`` runs, on existing model files or run directories (an ensemble
file too), one column each. Prints one markdown table with the machine. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from presets import machine  # noqa: E402

KERAS = {  # the faithful Keras replica of the seed, measured on this machine (issue 7)
    "train img/s": "170-300",
    "time to 87%": "~10 min",
    "batch img/s": "~870",
    "p50 ms": "~10 (model call)",
}

INFER_ROWS = [  # (label, figure from an ``infer`` result, the Keras replica's figure): both tables' inference rows
    ("single image p50 / p99, torch", lambda i: f"{i['torch_p50_ms']:.1f} / {i['torch_p99_ms']:.1f} ms", ""),
    ("single image p50 / p99, ONNX", lambda i: f"{i['onnx_p50_ms']:.1f} / {i['onnx_p99_ms']:.1f} ms", ""),
    ("batch 64, torch (model)", lambda i: f"{i['torch_batch_img_s']:.0f} img/s", KERAS["batch img/s"]),
    ("batch 64, ONNX (model)", lambda i: f"{i['onnx_batch_img_s']:.0f} img/s", ""),
    ("predict a folder (624 files, end to end)", lambda i: f"{i['folder_img_s']:.0f} img/s", ""),
    ("Python API, a list of 128 files (end to end)", lambda i: f"{i['api_img_s']:.0f} img/s", ""),
    ("Grad-CAM per image", lambda i: f"{1000 * i['gradcam_s']:.0f} ms", ""),
    ("LIME (1000 samples) per image", lambda i: f"{i['lime_s']:.2f} s", "1.4-1.9 s (lime package)"),
    ("peak RSS, inference process", lambda i: f"{i['peak_rss_mib']:.0f} MiB", ""),
]


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------- train


def bench_train(data: str, preset: str, out: Path, target: float) -> dict:
    import lightning as L
    import numpy as np
    import torch

    from pneumolens.config import resolve_config
    from pneumolens.data.cache import cached_images, to_model_input
    from pneumolens.data.sources import find_split
    from pneumolens.training.fit import fit

    cfg = resolve_config(preset)
    cache_dir = Path(tempfile.mkdtemp(prefix="pneumolens-bench-cache-"))
    test = find_split(data, "test")
    labels = np.array([s.label for s in test])

    class Clock(L.Callback):
        """Training wall time without the test scoring; test accuracy after each epoch."""

        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.excluded = 0.0
            self.epochs: list[dict] = []
            self.test_x: torch.Tensor | None = None

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.epoch_start = time.perf_counter()

        def on_validation_start(self, trainer, pl_module) -> None:
            if trainer.sanity_checking or not hasattr(self, "epoch_start"):
                return
            self.train_seconds = time.perf_counter() - self.epoch_start

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            # before the EMA callback (appended after this one) swaps its average back out: the
            # weights scored are the ones validation saw
            if trainer.sanity_checking:
                return
            t = time.perf_counter()
            elapsed = t - self.t0 - self.excluded  # training wall so far, scoring excluded
            if self.test_x is None:
                cached = cached_images(test, cfg.preprocess, cache_dir)
                self.test_x = torch.from_numpy(np.asarray(cached.array))
            was_training = pl_module.training
            pl_module.eval()
            channels, device = cfg.preprocess.channels, pl_module.device
            with torch.inference_mode():
                z = torch.cat(
                    [
                        pl_module(to_model_input(self.test_x[i : i + 128].to(device), channels)).float().cpu()
                        for i in range(0, len(self.test_x), 128)
                    ]
                )
            pl_module.train(was_training)
            acc = float(((torch.sigmoid(z).numpy() >= 0.5) == labels).mean())
            self.excluded += time.perf_counter() - t
            n_train = len(trainer.datamodule.train_set)
            self.epochs.append(
                {
                    "epoch": trainer.current_epoch,
                    "elapsed": elapsed,
                    "train_seconds": self.train_seconds,
                    "train_img_s": n_train / self.train_seconds,
                    "test_acc": acc,
                }
            )

    clock = Clock()
    fit(data, cfg, out, cache_dir=cache_dir, callbacks=[clock], overwrite=True)  # timed from scratch, each time
    wall = time.perf_counter() - clock.t0 - clock.excluded
    meta = json.loads((out / "val_metrics.json").read_text())
    reached = next((e for e in clock.epochs if e["test_acc"] >= target), None)
    from pneumolens.checkpoint import load_model

    training = load_model(out).meta["training"]
    steady = [e["train_img_s"] for e in clock.epochs[1:]] or [clock.epochs[0]["train_img_s"]]
    return {
        "wall_s": wall,
        "epochs": clock.epochs,
        "train_img_s": statistics.median(steady),
        "time_to_target_s": reached["elapsed"] if reached else None,
        "target_epoch": reached["epoch"] if reached else None,
        "cache_build_s": training["preprocessing_cache_seconds"],
        "precision": training["precision"],
        "val": meta,
        "peak_rss_mib": _peak_rss_mib(),
    }


# --------------------------------------------------------------------------------------- infer


def _percentiles(xs: list[float]) -> tuple[float, float]:
    import numpy as np

    return float(np.percentile(xs, 50)), float(np.percentile(xs, 99))


def _latency(prob, paths: list[str], pre) -> tuple[float, float]:
    """p50 / p99 milliseconds of one image end to end: decode, preprocess, ``prob``."""
    from pneumolens.data.images import preprocess, read_image

    for p in paths[:5]:  # warm-up
        prob(preprocess(read_image(p), pre))
    times = []
    for p in paths:
        t = time.perf_counter()
        prob(preprocess(read_image(p), pre))
        times.append(1000 * (time.perf_counter() - t))
    return _percentiles(times)


def bench_infer(data: str, model_path: Path, n_single: int, n_explain: int) -> dict:
    import numpy as np
    import torch

    from pneumolens.api import Model
    from pneumolens.checkpoint import load_model
    from pneumolens.data.images import preprocess, read_image
    from pneumolens.data.sources import find_split
    from pneumolens.explain import explain_image
    from pneumolens.export import OnnxModel, export_onnx
    from pneumolens.inference import Predictor

    loaded = load_model(model_path)
    model, pre = loaded.model.eval(), loaded.preprocess
    test = find_split(data, "test")
    paths = [s.path for s in test]
    onnx_path = Path(tempfile.mkdtemp()) / "model.onnx"
    export_onnx(loaded, onnx_path)
    onnx = OnnxModel(onnx_path)
    res: dict = {}

    def torch_prob(x: np.ndarray) -> float:
        with torch.inference_mode():
            return float(torch.sigmoid(model(torch.from_numpy(x[None]))))

    def onnx_prob(x: np.ndarray) -> float:
        return float(1 / (1 + np.exp(-onnx.logits(x[None])[0])))

    for name, prob in (("torch", torch_prob), ("onnx", onnx_prob)):
        res[f"{name}_p50_ms"], res[f"{name}_p99_ms"] = _latency(prob, paths[:n_single], pre)

    batch = np.stack([preprocess(read_image(p), pre) for p in paths[:64]])
    with torch.inference_mode():
        xb = torch.from_numpy(batch)
        model(xb)
        t, reps = time.perf_counter(), 5
        for _ in range(reps):
            model(xb)
        res["torch_batch_img_s"] = 64 * reps / (time.perf_counter() - t)
    onnx.logits(batch)
    t = time.perf_counter()
    for _ in range(5):
        onnx.logits(batch)
    res["onnx_batch_img_s"] = 64 * 5 / (time.perf_counter() - t)

    if torch.cuda.is_available():  # the same measures with the model on the GPU (decoding stays on the CPU)
        res.update(_gpu_infer(model, pre, paths, n_single))

    api = Model(loaded)  # on the CPU, before a Predictor moves the model to a GPU
    api.predict(paths[:4])
    t = time.perf_counter()
    api.predict(paths[:128])  # one list: read, segmented, checked and scored in batches
    res["api_img_s"] = len(paths[:128]) / (time.perf_counter() - t)

    predictor = Predictor(loaded)  # the GPU where there is one: the model moves there for good
    t = time.perf_counter()
    predictor.predict_paths(paths)
    res["folder_img_s"] = len(paths) / (time.perf_counter() - t)

    picks = paths[:: max(1, len(paths) // n_explain)][:n_explain]
    for method in ("gradcam", "lime"):
        try:  # one failing method (e.g. on a new device) must not cost the rest of the table
            explain_image(loaded, picks[0], method)  # warm-up
            res[f"{method}_s"] = statistics.median(explain_image(loaded, p, method).seconds for p in picks)
        except Exception as e:  # noqa: BLE001 - reported in the table and on stderr
            print(f"{method} failed: {e!r}", file=sys.stderr)
            res[f"{method}_s"] = float("nan")
    res["peak_rss_mib"] = _peak_rss_mib()
    return res


def _gpu_infer(model, pre, paths: list[str], n_single: int) -> dict:
    import numpy as np
    import torch

    from pneumolens.data.images import preprocess, read_image

    res: dict = {}
    gpu = model.to("cuda")

    def prob(x: np.ndarray) -> float:
        with torch.inference_mode():
            return float(torch.sigmoid(gpu(torch.from_numpy(x[None]).cuda())))  # float() waits for the GPU

    res["gpu_p50_ms"], res["gpu_p99_ms"] = _latency(prob, paths[:n_single], pre)
    x = torch.from_numpy(preprocess(read_image(paths[0]), pre)).cuda()
    for batch, autocast in ((64, False), (512, False), (512, True)):
        xb = x[None].expand(batch, *x.shape).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            for _ in range(3):
                gpu(xb)
            torch.cuda.synchronize()
            t, reps = time.perf_counter(), 20
            for _ in range(reps):
                gpu(xb)
            torch.cuda.synchronize()
        res[f"gpu_batch{batch}{'_bf16' if autocast else ''}_img_s"] = batch * reps / (time.perf_counter() - t)
    model.cpu()
    return res


# ---------------------------------------------------------------------------------------- data


def bench_data(data: str, fullres: str, preset: str) -> dict:
    from torch.utils.data import DataLoader

    from pneumolens.config import resolve_config
    from pneumolens.data.cache import CachedDataset, cached_images
    from pneumolens.data.dataset import XrayDataset, collate_skipping_bad
    from pneumolens.data.sources import find_split, list_folder

    cfg = resolve_config(preset).preprocess
    res = {}
    folders = [("fullres", list_folder(fullres))] if Path(fullres).is_dir() else []  # not carried to a GPU machine
    for name, samples in (*folders, ("224px", find_split(data, "test"))):
        cache_dir = tempfile.mkdtemp()

        def rate(ds, workers: int) -> float:
            loader = DataLoader(ds, batch_size=32, num_workers=workers, collate_fn=collate_skipping_bad)
            t = time.perf_counter()
            n = sum(len(b["image"]) for b in loader)
            return n / (time.perf_counter() - t)

        res[f"{name}_decode_img_s"] = rate(XrayDataset(samples, cfg), 2)
        cache = cached_images(samples, cfg, cache_dir)
        res[f"{name}_cache_build_s"] = cache.build_seconds
        res[f"{name}_cached_img_s"] = rate(CachedDataset(samples, cache), 0)
        res[f"{name}_n"] = len(samples)
    return res


# ---------------------------------------------------------------------------------------- main


def _sub(mode: str, *args: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = Path(f.name)
    cmd = [sys.executable, __file__, f"--_{mode}", str(result), *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--fullres", default="../shared/data/fullres_samples")
    ap.add_argument("--presets", nargs="+", default=["seed", "default"])
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--target", type=float, default=0.87, help="test accuracy for 'time to quality'")
    ap.add_argument("--single", type=int, default=100, help="images for single-image latency")
    ap.add_argument("--explain", type=int, default=5, help="images for Grad-CAM / LIME timing")
    ap.add_argument("--models", nargs="+", help="inference only: model files or run directories, one column each")
    ap.add_argument("--_train", help=argparse.SUPPRESS)
    ap.add_argument("--_infer", help=argparse.SUPPRESS)
    ap.add_argument("--_data", help=argparse.SUPPRESS)
    ap.add_argument("--preset", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._train:
        r = bench_train(args.data, args.preset, Path(args.out) / args.preset, args.target)
        Path(args._train).write_text(json.dumps(r))
        return
    if args._infer:
        r = bench_infer(args.data, Path(args.model or Path(args.out) / args.preset), args.single, args.explain)
        Path(args._infer).write_text(json.dumps(r))
        return
    if args._data:
        Path(args._data).write_text(json.dumps(bench_data(args.data, args.fullres, "default")))
        return

    common = ("--data", args.data, "--out", args.out, "--target", str(args.target))
    if args.models:
        infer_only(args.models, common, args.single, args.explain)
        return
    rows = {}
    for preset in args.presets:
        tr = _sub("train", *common, "--preset", preset)
        inf = _sub("infer", *common, "--preset", preset, "--single", str(args.single), "--explain", str(args.explain))
        rows[preset] = (tr, inf)
        print(f"{preset}: train {json.dumps(tr['epochs'])}", file=sys.stderr)
    d = _sub("data", *common, "--fullres", args.fullres)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench.json").write_text(json.dumps({"rows": rows, "data": d}, indent=2))

    def fmt_t(s: float | None) -> str:
        return "not reached" if s is None else f"{s / 60:.1f} min"

    print(f"\nmachine: {machine()}\n")
    names = list(rows)
    print("| measure | " + " | ".join(f"`{n}`" for n in names) + " | Keras seed replica |")
    print("|---|" + "---|" * (len(names) + 1))
    lines = [
        ("train images/s (median epoch)", lambda t, i: f"{t['train_img_s']:.0f}", KERAS["train img/s"]),
        ("training precision", lambda t, i: t["precision"], "fp32"),
        (
            f"time to {100 * args.target:.0f}% test accuracy (epoch)",
            lambda t, i: fmt_t(t["time_to_target_s"]) + (f" ({t['target_epoch']})" if t["target_epoch"] else ""),
            KERAS["time to 87%"],
        ),
        ("training wall, whole recipe", lambda t, i: fmt_t(t["wall_s"]), ""),
        ("cache build (train/, cold)", lambda t, i: f"{t['cache_build_s']:.0f} s", ""),
        ("peak RSS, training", lambda t, i: f"{t['peak_rss_mib']:.0f} MiB", ""),
    ]
    lines += [(label, lambda t, i, f=f: f(i), keras) for label, f, keras in INFER_ROWS]
    if "gpu_p50_ms" in rows[names[0]][1]:  # a GPU machine: training, folder prediction and explanations ran on it
        lines[-4:-1] = [(f"{label} (GPU)", f, keras) for label, f, keras in lines[-4:-1]]
        lines[10:10] = [
            ("single image p50 / p99, torch GPU", lambda t, i: f"{i['gpu_p50_ms']:.1f} / {i['gpu_p99_ms']:.1f} ms", ""),
            ("batch 64, torch GPU (model)", lambda t, i: f"{i['gpu_batch64_img_s']:.0f} img/s", ""),
            ("batch 512, torch GPU fp32 / bf16", lambda t, i: _gpu_batch512(i), ""),
        ]
    for label, f, keras in lines:
        print(f"| {label} | " + " | ".join(f(*rows[n]) for n in names) + f" | {keras} |")
    data = [
        f"{name} {d[f'{name}_decode_img_s']:.0f} -> {d[f'{name}_cached_img_s']:.0f} img/s "
        f"(cache build {d[f'{name}_cache_build_s']:.1f} s for {d[f'{name}_n']})"
        for name in ("fullres", "224px")
        if f"{name}_n" in d
    ]
    print("\nData (default preprocessing, 2 workers decoding vs cached reads): " + "; ".join(data))


def infer_only(models: list[str], common: tuple[str, ...], single: int, explain: int) -> None:
    """One inference column per model file, each measured in its own process."""
    cols = {m: _sub("infer", *common, "--model", m, "--single", str(single), "--explain", str(explain)) for m in models}
    print(f"\nmachine: {machine()}\n")
    print("| measure | " + " | ".join(f"`{m}`" for m in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for label, f, _ in INFER_ROWS:
        print(f"| {label} | " + " | ".join(f(c) for c in cols.values()) + " |")


def _gpu_batch512(i: dict) -> str:
    return f"{i['gpu_batch512_img_s']:.0f} / {i['gpu_batch512_bf16_img_s']:.0f} img/s"


if __name__ == "__main__":
    main()
