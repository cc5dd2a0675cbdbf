"""How fast the order book takes the RIS's orders, and how long a result waits to find its order.

    python benchmarks/orders.py [--n 2000] [--book-size 100000]

An order listener (``pneumolens.integration.hl7_orders.serve``, as ``pneumolens orders`` runs it)
listens on a free loopback port with an order book in a temporary folder. A client in the same
process sends ``--n`` ORM^O01 messages, each with its own accession number, one message per MLLP
connection, as the project's own sender (``hl7_outbox.MllpSender``) and many interface engines
do, timing each from connect to ACK: the listener answers once the order is stored (SQLite, WAL,
one transaction per message). Then the book is filled to ``--book-size`` orders (90 days of a busy
department is about 50,000) and a lookup (``order_for``, what the node does per image, opening the
file each time) is timed on orders present and absent. Prints a markdown table. Only loopback is
contacted; nothing is written outside the temporary folder. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pydicom

from pneumolens.integration.hl7_orders import Order, OrderBook, order_for, serve
from pneumolens.integration.hl7_outbox import MllpSender


def orm(i: int) -> bytes:
    obr = ["OBR", "1", f"PL{i}^RIS", f"FI{i}^PACS", "CXR1^Chest 1 view^L"] + [""] * 13 + [f"ACC{i:08d}"]
    segments = [
        f"MSH|^~\\&|RIS|HOSP|PNEUMOLENS|RAD|20261207120000||ORM^O01|m{i}|P|2.3.1",
        f"PID|1||P{i}^^^HOSP||Person^Test",
        f"ORC|NW|PL{i}^RIS|FI{i}^PACS||SC||||||||1234^Smith^John",
        "|".join(obr),
    ]
    return ("\r".join(segments) + "\r").encode()


def ms(values: list[float]) -> str:
    values = sorted(values)
    return f"{1000 * statistics.median(values):.2f} | {1000 * values[int(0.95 * (len(values) - 1))]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="orders sent over MLLP")
    ap.add_argument("--book-size", type=int, default=100_000, help="orders in the book for the lookups")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        book = OrderBook(Path(tmp) / "orders.db")
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        server = asyncio.run_coroutine_threadsafe(serve(book, "127.0.0.1", 0), loop).result(5)
        send = MllpSender("127.0.0.1", server.sockets[0].getsockname()[1], timeout=10)
        times = []
        t0 = time.perf_counter()
        for i in range(args.n):
            t = time.perf_counter()
            answer = send(orm(i))
            times.append(time.perf_counter() - t)
            assert answer.outcome == "delivered", answer
        wall = time.perf_counter() - t0
        assert len(book) == args.n
        loop.call_soon_threadsafe(server.close)

        more = [Order(f"BULK{i:08d}", f"PL{i}", f"FI{i}") for i in range(args.book_size - args.n)]
        book.put(more)
        header = pydicom.Dataset()
        present, absent = [], []
        for i in range(500):
            for accession, into in ((f"ACC{i % args.n:08d}", present), (f"NONE{i}", absent)):
                header.AccessionNumber = accession
                t = time.perf_counter()
                found = order_for(book, header)
                into.append(time.perf_counter() - t)
                assert (found is not None) == accession.startswith("ACC")
        size, count = (Path(tmp) / "orders.db").stat().st_size, len(book)

    print(f"\n{args.n} ORM^O01 orders over MLLP, one connection each, then lookups in a book of {count:,} orders\n")
    print("| what | median ms | 95th percentile ms | rate |")
    print("|---|---|---|---|")
    print(f"| an order sent, stored and acknowledged | {ms(times)} | {args.n / wall:.0f} orders/s |")
    print(f"| a result's lookup, order present | {ms(present)} | |")
    print(f"| a result's lookup, no order | {ms(absent)} | |")
    print(f"\nbook file: {size / 1e6:.1f} MB for {args.book_size:,} orders")


if __name__ == "__main__":
    main()
