"""The seed's Keras network trained in Keras/TensorFlow on this machine: the reference speed.

    python benchmarks/keras_seed.py --data ../shared/data/chest_xray [--epochs 3]

Needs TensorFlow, which pneumolens does not depend on: run it from a separate environment
(``python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu pillow``). The network
is the seed's, layer for layer (the ``seed`` preset's table in the README). Three ways to feed it:
images decoded once into memory at 64x64 (nearest, grayscale replicated to RGB, [0, 1]), without
and with augmentation, which is Keras' own training speed with no disk in the loop (the best case
for the replica); and batches read from disk every epoch as the seed did, with Keras 3's
``image_dataset_from_directory`` (Keras 3 has no ``ImageDataGenerator``; the seed's rotation /
shift / zoom augmentation is reproduced with Keras' preprocessing layers). Prints images/s of the
median epoch after the first (which includes graph tracing). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image


def load(root: Path, size: int, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for label, cls in enumerate(["NORMAL", "PNEUMONIA"]):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in {".jpeg", ".jpg", ".png"})
        for p in files[:limit]:
            im = Image.open(p).convert("L").resize((size, size), Image.NEAREST)
            xs.append(np.asarray(im, dtype=np.float32) / 255.0)
            ys.append(label)
    x = np.repeat(np.stack(xs)[..., None], 3, axis=-1)
    return x, np.asarray(ys, dtype=np.float32)


def seed_network(keras, augment: bool):
    L = keras.layers
    layers = [keras.Input((64, 64, 3))]
    if augment:  # rotation 10 degrees, shift 0.2, zoom 0.1, edge pixels repeated
        layers += [
            L.RandomRotation(10 / 360, fill_mode="nearest"),
            L.RandomTranslation(0.2, 0.2, fill_mode="nearest"),
            L.RandomZoom(0.1, 0.1, fill_mode="nearest"),
        ]
    for filters in (32, 64, 128, 128):
        layers += [L.Conv2D(filters, 3, padding="same", activation="relu"), L.MaxPooling2D(2)]
    layers += [L.Dropout(0.2), L.Flatten(), L.Dense(128, activation="relu"), L.Dropout(0.2)]
    layers += [L.Dense(128), L.Dense(512), L.Dense(1, activation="sigmoid")]
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.RMSprop(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def epoch_clock(keras) -> tuple[object, list[float]]:
    """Keras' LambdaCallback that appends each epoch's wall time to the returned list."""
    times: list[float] = []
    start: list[float] = []
    callback = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: start.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs: times.append(time.perf_counter() - start[-1]),
    )
    return callback, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit", type=int, help="at most N images per class")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    x, y = load(Path(args.data) / "train", 64, args.limit)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}")
    print(f"{len(x)} training images at 64x64, batch 32\n")
    print("| Keras seed replica | images/s (median epoch after the first) | epochs (s) |")
    print("|---|---|---|")
    from_disk = keras.utils.image_dataset_from_directory(
        Path(args.data) / "train",
        labels="inferred",
        label_mode="binary",
        class_names=["NORMAL", "PNEUMONIA"],
        color_mode="rgb",
        batch_size=32,
        image_size=(64, 64),
        interpolation="nearest",
        shuffle=True,
        seed=42,
        verbose=False,
    )
    from_disk = from_disk.map(lambda im, lab: (tf.cast(im, "float32") / 255.0, lab)).prefetch(2)
    ways = [("in memory, no augmentation", False, None), ("in memory, rotation/shift/zoom layers", True, None)]
    if not args.limit:  # the folder holds every image
        ways.append(("from disk every epoch, rotation/shift/zoom layers", True, from_disk))
    for name, augment, dataset in ways:
        keras.utils.set_random_seed(42)
        model = seed_network(keras, augment)
        clock, times = epoch_clock(keras)
        if dataset is None:
            model.fit(x, y, batch_size=32, epochs=args.epochs, shuffle=True, verbose=0, callbacks=[clock])
        else:
            model.fit(dataset, epochs=args.epochs, verbose=0, callbacks=[clock])
        rate = len(x) / statistics.median(times[1:] or times)
        print(f"| {name} | {rate:.0f} | {', '.join(f'{t:.1f}' for t in times)} |", flush=True)


if __name__ == "__main__":
    main()
