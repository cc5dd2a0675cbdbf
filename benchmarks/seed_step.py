"""The seed network's bare training step on the CPU: which layouts and layer orders are fastest.

    python benchmarks/seed_step.py [--steps 60] [--repeats 3] [--profile]

One RMSprop step on a batch of 32 random 64x64 images (grayscale replicated to RGB), no data
loading, no Lightning: the ceiling for ``pneumolens train --preset seed``. Variants: contiguous vs
channels-last memory, Keras' conv-ReLU-pool order vs the shipped conv-pool-ReLU (same outputs),
and ``torch.compile``. Prints images/s of the best repeat; ``--profile`` adds where the shipped
variant's step spends its time (torch.profiler, by operator). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from pneumolens.models import create_model


def seed_network(keras_order: bool, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    m = create_model("seed_cnn", in_channels=3, image_size=64)
    if keras_order:  # conv, ReLU, pool, as the Keras code has it
        layers = list(m.features)
        for i in range(0, len(layers), 3):
            layers[i + 1], layers[i + 2] = layers[i + 2], layers[i + 1]
        m.features = nn.Sequential(*layers)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def rate(
    keras_order: bool, channels_last: bool, compile_: bool, steps: int, repeats: int, profile: bool = False
) -> float:
    m = seed_network(keras_order, channels_last)
    opt = torch.optim.RMSprop(m.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    run = torch.compile(m) if compile_ else m
    x, y = torch.rand(32, 1, 64, 64), torch.randint(0, 2, (32,)).float()
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def step() -> None:
        loss = F.binary_cross_entropy_with_logits(run(x.expand(-1, 3, -1, -1).contiguous(memory_format=fmt)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(10):  # warm-up (and compilation)
        step()
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)
        print(f"\nwhere one step's time goes ({steps} steps, shipped variant):\n{table}")
        return 0.0
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        best = max(best, 32 * steps / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also profile the shipped variant's step by operator")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| seed network, one training step (batch 32) | images/s |")
    print("|---|---|")
    for name, keras_order, cl, comp in [
        ("contiguous, conv-ReLU-pool (Keras order)", True, False, False),
        ("channels-last, conv-ReLU-pool (Keras order)", True, True, False),
        ("channels-last, conv-pool-ReLU (shipped)", False, True, False),
        ("channels-last, conv-pool-ReLU, torch.compile", False, True, True),
    ]:
        print(f"| {name} | {rate(keras_order, cl, comp, args.steps, args.repeats):.0f} |", flush=True)
    if args.profile:
        rate(False, True, False, args.steps, 1, profile=True)


if __name__ == "__main__":
    main()
