"""Soak the web service: N mixed good and bad requests over loopback, the server must stay up.

    python benchmarks/soak.py [--requests 10000] [--concurrency 8] [--model runs/x]

Starts `pneumolens serve` on a free 127.0.0.1 port. Good requests are real Kaggle test images
(JPEG, and the same pixels as PNG and DICOM); each answer must match the probability the Python API
gives for that file. Bad requests come from the generated corpus of tests/bad_inputs.py (empty,
truncated, bad CRC, text, 1x1, 50,000 x 50,000 header, DICOM without pixels) plus oversized uploads,
a wrong form field and an unknown method; each must get its 4xx. Prints counts by outcome, the
server's RSS at start, after each tenth and at the end, and any mismatch. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import rss_mib, serving  # noqa: E402

from bad_inputs import EXPECTED, make_corpus  # noqa: E402
from conftest import make_dicom  # noqa: E402


def good_files(data: Path, tmp: Path, n: int) -> list[tuple[str, bytes]]:
    from PIL import Image

    out = []
    for i, p in enumerate(
        sorted((data / "test" / "NORMAL").iterdir())[:n] + sorted((data / "test" / "PNEUMONIA").iterdir())[:n]
    ):
        out.append((p.name, p.read_bytes()))
        if i % 4 == 0:
            gray = np.asarray(Image.open(p).convert("L"))
            out.append((p.stem + ".dcm", make_dicom(tmp / f"{i}.dcm", gray).read_bytes()))
            png = tmp / f"{i}.png"
            Image.fromarray(gray).save(png)
            out.append((png.name, png.read_bytes()))
    return out


def expected_probabilities(model: str | None, files: list[tuple[str, bytes]], tmp: Path) -> dict[str, float]:
    import pneumolens

    m = pneumolens.load(model)
    result = {}
    for name, data in files:
        path = tmp / "expected" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        result[name] = m.predict(str(path)).probability
    return result


def bad_requests(tmp: Path, limit: int) -> list[tuple[str, dict, int]]:
    corpus = make_corpus(tmp / "corpus")
    reqs = []
    for name, why in EXPECTED.items():
        if why is not None and not corpus[name].is_symlink():
            reqs.append((name, {"files": {"file": (name, corpus[name].read_bytes())}}, 400))
    reqs.append(("oversized", {"files": {"file": ("big.jpeg", b"\xff" * (limit + 1))}}, 413))
    reqs.append(("wrong field", {"files": {"image": ("x.jpeg", b"\xff\xd8")}}, 422))
    return reqs


async def soak(url: str, plan: list, expected: dict[str, float], concurrency: int, on_progress) -> tuple[Counter, list]:
    outcomes: Counter[str] = Counter()
    mismatches: list[str] = []
    queue: asyncio.Queue = asyncio.Queue()
    for i, item in enumerate(plan):
        queue.put_nowait((i, item))

    async def client(http: httpx.AsyncClient) -> None:
        while True:
            try:
                i, (kind, name, kwargs, status) = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            params = {"explain": "false"}
            if name == "unknown method":
                params["method"] = "shap"
            try:
                r = await http.post(f"{url}/api/v1/predict", params=params, **kwargs)
            except httpx.HTTPError as e:
                outcomes["transport error"] += 1
                mismatches.append(f"{name}: {type(e).__name__}")
                continue
            if r.status_code != status:
                mismatches.append(f"{name}: HTTP {r.status_code}, expected {status}: {r.text[:200]}")
                outcomes[f"{kind}: wrong status"] += 1
            elif kind == "good" and abs(r.json()["probability"] - expected[name]) > 1e-4:
                mismatches.append(f"{name}: probability {r.json()['probability']} != {expected[name]}")
                outcomes["good: wrong answer"] += 1
            else:
                outcomes[f"{kind}: {status}"] += 1
            if (i + 1) % max(1, len(plan) // 10) == 0:
                on_progress(i + 1)

    async with httpx.AsyncClient(timeout=120) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return outcomes, mismatches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--bad-share", type=float, default=0.4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pneumolens-soak-"))
    limit_mb = 5
    goods = good_files(Path(args.data), tmp, 12)
    expected = expected_probabilities(args.model, goods, tmp)
    bads = bad_requests(tmp, limit_mb * 1024 * 1024)
    rng = random.Random(0)
    plan = []
    for _ in range(args.requests):
        if rng.random() < args.bad_share:
            name, kwargs, status = rng.choice([*bads, ("unknown method", {"files": {"file": goods[0]}}, 422)])
            plan.append(("bad", name, kwargs, status))
        else:
            name, data = rng.choice(goods)
            plan.append(("good", name, {"files": {"file": (name, data)}}, 200))

    rss: list[tuple[int, float]] = []
    with serving(args.model, {"PNEUMOLENS_MAX_UPLOAD_MB": str(limit_mb)}, wait_s=300) as (server, url):
        rss.append((0, rss_mib(server.pid)))
        t0 = time.perf_counter()
        outcomes, mismatches = asyncio.run(
            soak(url, plan, expected, args.concurrency, lambda n: rss.append((n, rss_mib(server.pid))))
        )
        wall = time.perf_counter() - t0
        alive = server.poll() is None and httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        rss.append((args.requests, rss_mib(server.pid)))

    print(
        f"\n{args.requests:,} requests ({args.bad_share:.0%} bad) from {args.concurrency} clients in {wall:.0f} s "
        f"({args.requests / wall:.1f} req/s); server alive at the end: {alive}\n"
    )
    print("| outcome | requests |\n|---|---|")
    for k, v in sorted(outcomes.items()):
        print(f"| {k} | {v:,} |")
    print("\nserver RSS (MiB) after n requests: " + ", ".join(f"{n:,}: {m:.0f}" for n, m in rss))
    print(f"mismatches: {len(mismatches)}")
    for m in mismatches[:20]:
        print("  ", m)


if __name__ == "__main__":
    main()
