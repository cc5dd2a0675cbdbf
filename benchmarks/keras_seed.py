"""The seed's Keras network trained in Keras/TensorFlow on this machine: the reference speed.

    python benchmarks/keras_seed.py --data ../shared/data/chest_xray [--epochs 3]

Needs TensorFlow, which pneumolens does not depend on: run it from a separate environment
(``python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu pillow``). The network
is the seed's, layer for layer (the ``seed`` preset's table in the README); training images are
decoded once into memory at 64x64 (nearest, grayscale replicated to RGB, [0, 1]), so the figure is
Keras' own training speed, with no disk in the loop: the best case for the replica. Keras 3 has no
``ImageDataGenerator``; the seed's rotation / shift / zoom augmentation is reproduced with Keras'
preprocessing layers, once with it and once without. Prints images/s of the median epoch after the
first (which includes graph tracing). Not part of the test suite.
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
    for augment in (False, True):
        keras.utils.set_random_seed(42)
        model = seed_network(keras, augment)
        times: list[float] = []

        class Clock(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.t)

        model.fit(x, y, batch_size=32, epochs=args.epochs, shuffle=True, verbose=0, callbacks=[Clock()])
        rate = len(x) / statistics.median(times[1:] or times)
        name = "with rotation/shift/zoom layers" if augment else "no augmentation"
        print(f"| {name} | {rate:.0f} | {', '.join(f'{t:.1f}' for t in times)} |", flush=True)


if __name__ == "__main__":
    main()
