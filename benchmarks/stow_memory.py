"""Memory the node's STOW-RS service spends splitting one request into its instances.

    python benchmarks/stow_memory.py [--mb 256] [--parts 8]

Builds one ``multipart/related; type="application/dicom"`` body of ``--parts`` parts of random bytes
(``--mb`` in all, the size of a few uncompressed full-field films) and splits it two ways, each in
a fresh process: as the service does since 2026-12-07 (``pneumolens.integration.dicomweb_service.RelatedParts``,
fed 64 kB chunks as uvicorn hands them over, each part spooled to a temporary file beyond 8 MB,
then the parts read back one at a time, as the service stores them) and as it did before (the
standard library's email parser over the whole body, held in memory). Prints a markdown table: the
seconds to split, and the peak of the memory allocated while splitting, the body itself not
counted (``tracemalloc``, in a second pass: tracing slows splitting down, so the seconds are the
first, untraced pass's), each part checked byte for byte. The old service also copied the body
once more before parsing it; that copy is not counted. The body is generated in each process, not
read from disk; nothing is written but the spooled parts, in the system's temporary folder,
removed when read.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import json
import subprocess
import sys
import time
import tracemalloc

BOUNDARY = "stow-memory-benchmark"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
CHUNK = 64 * 1024
WAYS = (("streaming", "streamed, parts spooled (since 2026-12-07)"), ("whole", "whole body, email parser"))


def body_and_parts(mb: int, n: int) -> tuple[bytes, list[bytes]]:
    import numpy as np

    rng = np.random.default_rng(0)
    parts = [rng.bytes(mb * 1024 * 1024 // n) for _ in range(n)]
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return b"".join(head + part + b"\r\n" for part in parts) + f"--{BOUNDARY}--\r\n".encode(), parts


def split(way: str, body: bytes) -> list[int]:
    """The hashes of the parts of ``body``, split the way ``way`` names."""
    if way == "streaming":
        from pneumolens.integration.dicomweb_service import RelatedParts

        with RelatedParts(CONTENT_TYPE) as spooled:
            view = memoryview(body)
            for at in range(0, len(body), CHUNK):
                spooled.feed(bytes(view[at : at + CHUNK]))
            spooled.finish()
            return [hash(spooled.read(i)) for i in range(len(spooled))]  # one part in memory at a time
    head = f"Content-Type: {CONTENT_TYPE}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    return [hash(part.get_payload(decode=True)) for part in message.iter_parts()]


def measure(way: str, mb: int, n: int) -> dict:
    """Seconds (untraced) and peak allocation (a second, traced pass) of splitting one body."""
    body, parts = body_and_parts(mb, n)
    sums = [hash(part) for part in parts]
    del parts
    t0 = time.perf_counter()
    same = split(way, body) == sums
    seconds = time.perf_counter() - t0
    tracemalloc.start()  # from here: what splitting allocates
    same = same and split(way, body) == sums
    return {"seconds": seconds, "peak_mb": tracemalloc.get_traced_memory()[1] / 2**20, "same": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--way", choices=["streaming", "whole"], help=argparse.SUPPRESS)  # one child's
    args = parser.parse_args()
    if args.way:
        print(json.dumps(measure(args.way, args.mb, args.parts)))
        return
    peak = "peak memory allocated, the body not counted (MB)"
    print(f"| way ({args.mb} MB in {args.parts} parts) | seconds | {peak} | parts intact |")
    print("|---|---|---|---|")
    for way, name in WAYS:
        command = [sys.executable, __file__, "--mb", str(args.mb), "--parts", str(args.parts), "--way", way]
        got = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        print(f"| {name} | {got['seconds']:.2f} | {got['peak_mb']:.0f} | {'yes' if got['same'] else 'NO'} |")


if __name__ == "__main__":
    main()
