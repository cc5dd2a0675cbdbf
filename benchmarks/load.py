"""Load on the web service over loopback: requests/s and latency, with and without the heatmap.

    python benchmarks/load.py [--model runs/default] [--requests 64] [--concurrency 1 32] [--method gradcam]

Starts `pneumolens serve` on a free 127.0.0.1 port, sends a bounded number of requests (real Kaggle
test images) from C concurrent clients, checks every answer, and prints a markdown table with the
server's RSS before and after. Only loopback is ever contacted. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def serving(model: str | None = None, env: dict[str, str] | None = None, wait_s: float = 120.0):
    """`pneumolens serve` on a free loopback port, up and healthy; yields (process, base URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "pneumolens", "serve", "--port", str(port)]
    if model:
        cmd += ["--model", model]
    server = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.2)
        yield server, url
    finally:
        server.terminate()
        server.wait(timeout=30)


async def run_load(
    url: str, files: list[bytes], n: int, c: int, explain: bool, method: str = "gradcam"
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            r = await http.post(
                f"{url}/api/v1/predict",
                params={"explain": str(explain).lower(), "method": method},
                files={"file": (f"{i}.jpeg", files[i % len(files)])},
            )
            latencies.append(time.perf_counter() - t0)
            ok = r.status_code == 200 and 0 <= r.json()["probability"] <= 1
            ok = ok and (r.json()["heatmap_png"] is not None) == explain
            errors += not ok

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=300) as http:
        await asyncio.gather(*(client(http) for _ in range(c)))
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "rps": n / wall,
        "p50": 1000 * statistics.median(lat),
        "p99": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--method", default="gradcam", help="the heatmap rows' map (the server's default: occlusion)")
    args = ap.parse_args()
    files = [p.read_bytes() for p in sorted((Path(args.data) / "test" / "PNEUMONIA").iterdir())[:16]]
    with serving(args.model) as (server, url):
        asyncio.run(run_load(url, files, 4, 1, True, args.method))  # warm-up
        start_rss = rss_mib(server.pid)
        print(
            f"\nserver RSS after warm-up: {start_rss:.0f} MiB; {args.requests} requests a row; {os.cpu_count()} cores\n"
        )
        print("| clients | heatmap | requests/s | p50 latency | p99 latency | failed |")
        print("|---|---|---|---|---|---|")
        for c in args.concurrency:
            for explain in (False, True):
                r = asyncio.run(run_load(url, files, args.requests, c, explain, args.method))
                print(
                    f"| {c} | {args.method if explain else 'none'} | {r['rps']:.1f} | {r['p50']:.0f} ms "
                    f"| {r['p99']:.0f} ms | {r['errors']} |",
                    flush=True,
                )
        print(f"\nserver RSS at the end: {rss_mib(server.pid):.0f} MiB")


if __name__ == "__main__":
    main()
