"""Fuzz the decode path for N minutes: mutated JPEG, PNG and DICOM bytes into read_image + preprocess.

    python benchmarks/fuzz_decode.py --minutes 10 [--out runs/fuzz]

Hypothesis drives the mutations (truncation, bit flips, inserted and deleted runs, overwritten
header bytes) of seed files made from one real X-ray. The contract under test: every input either
decodes to a finite [0, 1] array (and preprocesses to the model's input shape) or raises
``ImageReadError`` naming the file. Anything else (another exception, a non-finite pixel, an input
taking over 5 s) is a finding: it is shrunk by hypothesis, written to --out and counted. Prints a
summary table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_dicom, real_images  # noqa: E402
from pneumolens.config import DEFAULT  # noqa: E402
from pneumolens.data.images import ImageReadError, preprocess, read_image  # noqa: E402

SLOW_S = 5.0


def seeds() -> dict[str, bytes]:
    src = real_images("test", "NORMAL", 1)[0]
    gray = np.asarray(Image.open(src).convert("L"))
    out = {"jpeg": src.read_bytes()}
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    out["png"] = buf.getvalue()
    with tempfile.TemporaryDirectory() as d:
        out["dcm8"] = make_dicom(Path(d) / "a.dcm", gray).read_bytes()
        out["dcm16"] = make_dicom(Path(d) / "b.dcm", gray.astype(np.uint16) * 16, "MONOCHROME1").read_bytes()
    return out


def mutations(seed: bytes):
    n = len(seed)
    edit = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, n - 1), st.integers(1, 255)),
        st.tuples(st.just("cut"), st.integers(0, n), st.just(0)),
        st.tuples(st.just("insert"), st.integers(0, n), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), st.integers(0, n - 1), st.integers(1, 256)),
        st.tuples(st.just("header"), st.integers(0, min(n, 400) - 1), st.binary(min_size=1, max_size=8)),
    )
    return st.lists(edit, min_size=1, max_size=6)


def apply(seed: bytes, edits) -> bytes:
    data = bytearray(seed)
    for kind, at, arg in edits:
        at = min(at, len(data))
        if kind == "flip" and at < len(data):
            data[at] ^= arg
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = arg
        elif kind == "delete":
            del data[at : at + arg]
        elif kind == "header":
            data[at : at + len(arg)] = arg
    return bytes(data)


class Finding(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--out", default="runs/fuzz")
    ap.add_argument("--chunk", type=int, default=300, help="hypothesis examples per round")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = DEFAULT.preprocess
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    findings: list[str] = []
    slowest = 0.0
    start, all_seeds = time.monotonic(), seeds()
    budget = 60 * args.minutes / len(all_seeds)  # an equal share of the time for each seed

    def make_target(kind: str, seed: bytes):
        name = f"fuzz.{'dcm' if kind.startswith('dcm') else kind}"

        @settings(max_examples=args.chunk, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(edits=mutations(seed))
        def target(edits):
            nonlocal slowest
            data = apply(seed, edits)
            t = time.perf_counter()
            try:
                x = preprocess(read_image(name, data=data), cfg)
            except ImageReadError as e:
                if name not in str(e):
                    raise Finding(f"refusal without the file name: {e}") from None
                outcomes[f"{kind}: refused"] += 1
                reasons[e.reason.split(" (")[0]] += 1
            except Exception as e:  # noqa: BLE001 - any other exception is what we look for
                raise Finding(f"{type(e).__name__}: {e}") from e
            else:
                if not (np.isfinite(x).all() and 0 <= x.min() <= x.max() <= 1):
                    raise Finding("non-finite or out-of-range model input")
                outcomes[f"{kind}: decoded"] += 1
            took = time.perf_counter() - t
            slowest = max(slowest, took)
            if took > SLOW_S:
                raise Finding(f"one input took {took:.1f} s")

        return target

    for i, (kind, seed) in enumerate(all_seeds.items()):
        target = make_target(kind, seed)

        while time.monotonic() < start + (i + 1) * budget:
            try:
                target()
            except Finding as f:
                findings.append(f"{kind}: {f}")
                (out / f"finding-{len(findings)}.txt").write_text(f"{kind}: {f}\n")

    total = sum(outcomes.values())
    print(f"\nfuzzed {total:,} inputs in {args.minutes:g} min; findings: {len(findings)}")
    print("\n| seed: outcome | inputs |\n|---|---|")
    for k, v in sorted(outcomes.items()):
        print(f"| {k} | {v:,} |")
    print("\n| refusal reason | inputs |\n|---|---|")
    for k, v in reasons.most_common():
        print(f"| {k} | {v:,} |")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nslowest input {slowest * 1000:.0f} ms; peak RSS {rss:.0f} MiB")
    for f in findings:
        print("FINDING", f)


if __name__ == "__main__":
    main()
