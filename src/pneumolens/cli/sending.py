"""``pneumolens outbox`` and ``orders``, and the flags and outboxes with which ``listen`` and ``watch``
send each result on to the EHR (FHIR) and the RIS (HL7 v2)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from pneumolens.cli.common import tls_flags
from pneumolens.integration.hl7_orders import ACCESSION_FIELDS


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ob = sub.add_parser(
        "outbox",
        help="what waits in an outbox of listen --fhir-url / --hl7-to / --stow-url or of audit --notify, and what "
        "was refused",
    )
    ob.add_argument("folder", help="the outbox, or the --fhir / --hl7 / --out folder that holds it")
    ob.add_argument(
        "--requeue",
        action="store_true",
        help="move the refused messages back to be sent again (once the cause is mended)",
    )
    ob.set_defaults(run=cmd_outbox)

    fk = sub.add_parser(
        "fhir-key",
        help="the public key set (JWKS) to register with the EHR for listen --fhir-client-id --fhir-key KEY",
    )
    fk.add_argument("key", help="a PEM private key: RSA of 2048 bits or more, or EC P-384")
    fk.add_argument(
        "--create", action="store_true", help="first write a new EC P-384 key to KEY (readable by its owner only)"
    )
    fk.set_defaults(run=cmd_fhir_key)

    od = sub.add_parser(
        "orders",
        help="take the RIS's imaging orders (HL7 v2 ORM^O01, OMI^O23, OMG^O19 over MLLP) into an order book, so "
        "that listen, watch and serve --orders file each result under its order",
    )
    od.add_argument("book", help="the order book, an SQLite file (made if missing)")
    od.add_argument("--host", default="0.0.0.0", help="address to listen on")
    od.add_argument("--port", type=int, default=2575, help="MLLP port (2575: HL7's registered port)")
    od.add_argument(
        "--find",
        metavar="ACCESSION",
        help="print the order of this accession number from the book as JSON (exit 1 when there is none) and stop; "
        "no listener is started",
    )
    od.add_argument(
        "--accession-field",
        choices=ACCESSION_FIELDS,
        default="auto",
        help="where the RIS puts the accession number that the images carry: auto (IPC-1 of OMI, else OBR-18, as "
        "IHE's Scheduled Workflow has it), or one field, e.g. OBR-3 where the filler order number is the accession "
        "number",
    )
    od.add_argument(
        "--keep-days",
        type=float,
        default=90.0,
        help="drop orders received more than DAYS ago (default 90; 0 keeps every order)",
    )
    tls_flags(
        od,
        "--tls",
        "MLLP over TLS: this listener's PEM certificate",
        "",
        "a PEM CA: the RIS must present a certificate it signed (mutual TLS)",
    )
    od.set_defaults(run=cmd_orders)


def send_on_flags(parser: argparse.ArgumentParser) -> None:
    """``--fhir``, ``--fhir-url``, ``--hl7``, ``--hl7-to`` and their TLS and token flags (``listen``, ``watch``)."""
    parser.add_argument(
        "--fhir",
        metavar="DIR",
        help="also write each result as a FHIR R4 Observation (SOP_INSTANCE_UID.json, no patient in it) in DIR, "
        "for an interface engine",
    )
    parser.add_argument(
        "--fhir-url",
        metavar="URL",
        help="also post each result (its Observation and a DiagnosticReport, a transaction Bundle) to the FHIR "
        "server at this base URL; needs --fhir DIR, whose outbox/ keeps what the server has not yet taken",
    )
    parser.add_argument("--fhir-token-file", metavar="FILE", help="a bearer token for --fhir-url, read from FILE")
    parser.add_argument(
        "--fhir-ca",
        metavar="PEM",
        help="the CA that signed an https --fhir-url and its token endpoint (default: the system's)",
    )
    parser.add_argument(
        "--fhir-client-id",
        metavar="ID",
        help="get tokens for --fhir-url by SMART Backend Services, as this registered client (with --fhir-key)",
    )
    parser.add_argument(
        "--fhir-key",
        metavar="PEM",
        help="the private key that signs the client's assertions (its public half: pneumolens fhir-key PEM)",
    )
    parser.add_argument(
        "--fhir-token-url",
        metavar="URL",
        help="the EHR's token endpoint (default: from --fhir-url's .well-known/smart-configuration)",
    )
    parser.add_argument(
        "--fhir-scope",
        metavar="SCOPES",
        help="the scopes to ask for, space-separated (default: system/Observation.write system/DiagnosticReport.write)",
    )
    parser.add_argument(
        "--hl7",
        metavar="DIR",
        help="also write each result as an HL7 v2.5.1 ORU^R01 message (SOP_INSTANCE_UID.hl7) in DIR, for a RIS; "
        "the files hold patient identifiers",
    )
    parser.add_argument(
        "--hl7-to",
        metavar="[APP[^FACILITY]@]HOST:PORT",
        help="also send those messages to this MLLP listener (a RIS or interface engine; APP and FACILITY go in "
        "MSH-5 and MSH-6); needs --hl7 DIR, whose outbox/ keeps what it has not yet acknowledged",
    )
    parser.add_argument(
        "--hl7-tls",
        action="store_true",
        help="send to --hl7-to over TLS, checking its certificate with --hl7-tls-ca (default: the system's CAs) "
        "and presenting --hl7-tls-cert/--hl7-tls-key when given",
    )
    tls_flags(parser, "--hl7-tls", "TLS to the RIS: our PEM client certificate", "the RIS's")
    parser.add_argument(
        "--orders",
        metavar="BOOK",
        help="file each result of --hl7 (ORU^R01) and --fhir (basedOn) under the RIS's order of the image's "
        "accession number, from this order book (pneumolens orders BOOK); an image without an order goes as before",
    )


SMART_FLAGS = ("--fhir-client-id", "--fhir-key", "--fhir-token-url", "--fhir-scope")


def _smart(args: argparse.Namespace) -> dict | None:
    """SmartAuth's arguments from ``--fhir-client-id`` and the flags that go with it, or None."""
    from pneumolens.integration.smart_auth import DEFAULT_SCOPE, load_key
    from pneumolens.monitoring.alert import check_url

    if not args.fhir_client_id:
        for flag in SMART_FLAGS[1:]:
            if getattr(args, flag[2:].replace("-", "_")):
                raise ValueError(f"{flag} needs --fhir-client-id")
        return None
    if not args.fhir_key:
        raise ValueError("--fhir-client-id needs --fhir-key PEM: the private key that signs its assertions")
    load_key(args.fhir_key)  # readable and of a kind the EHR must accept, before the model loads
    if args.fhir_token_url:
        try:
            check_url(args.fhir_token_url)
        except ValueError:
            raise ValueError("--fhir-token-url: expected an http:// or https:// URL with a host") from None
    scope = args.fhir_scope if args.fhir_scope is not None else DEFAULT_SCOPE
    if not scope.strip() or any(c in scope for c in '"\\\r\n'):
        raise ValueError(f"--fhir-scope {scope!r}: expected scopes separated by spaces")
    return {
        "client_id": args.fhir_client_id,
        "key_path": args.fhir_key,
        "token_url": args.fhir_token_url,
        "scope": " ".join(scope.split()),
    }


def stow_flags(parser: argparse.ArgumentParser) -> None:
    """``--stow-url`` and its token and CA flags (``listen``)."""
    parser.add_argument(
        "--stow-url",
        metavar="URL",
        help="also store each DICOM object the node makes in the PACS whose DICOMweb service has this base URL "
        "(STOW-RS to URL/studies); what it has not yet taken waits in OUT/stow-outbox/",
    )
    parser.add_argument(
        "--stow-token-file",
        metavar="FILE",
        help="a bearer token for --stow-url, read from FILE (and again whenever the file changes)",
    )
    parser.add_argument(
        "--stow-ca", metavar="PEM", help="the CA that signed an https --stow-url (default: the system's)"
    )


def stow_outbox_of(args: argparse.Namespace):
    """The DICOMweb outbox of ``listen`` (``--stow-url``), every flag checked before the model loads."""
    from pneumolens.integration.credentials import TokenFile
    from pneumolens.integration.outbox import Outbox
    from pneumolens.integration.stow_outbox import StowSender
    from pneumolens.monitoring.alert import check_url

    if not args.stow_url:
        for flag, value in (("--stow-token-file", args.stow_token_file), ("--stow-ca", args.stow_ca)):
            if value:
                raise ValueError(f"{flag} is for --stow-url, which was not given")
        return None
    try:
        check_url(args.stow_url)
    except ValueError:
        raise ValueError(
            "--stow-url: expected an http:// or https:// URL with a host (the DICOMweb base URL)"
        ) from None
    if args.stow_ca and not args.stow_url.startswith("https:"):
        raise ValueError("--stow-ca is for an https:// --stow-url")
    if args.stow_ca and not Path(args.stow_ca).is_file():
        raise ValueError(f"--stow-ca {args.stow_ca}: no such file")
    token = TokenFile(args.stow_token_file, "--stow-token-file") if args.stow_token_file else None
    try:
        return Outbox(Path(args.out) / "stow-outbox", StowSender(args.stow_url, token, args.stow_ca), suffix=".dcm")
    except OSError as e:
        raise ValueError(f"--out {args.out}: cannot create its stow-outbox/ ({e.strerror or e})") from None


def fhir_outbox_of(args: argparse.Namespace):
    """The FHIR outbox of ``listen`` or ``watch`` (``--fhir-url``), every flag checked before the model loads."""
    from pneumolens.integration.credentials import TokenFile
    from pneumolens.integration.fhir_outbox import FhirSender
    from pneumolens.integration.outbox import Outbox
    from pneumolens.monitoring.alert import check_url

    if not args.fhir_url:
        for flag in ("--fhir-token-file", "--fhir-ca", *SMART_FLAGS):
            if getattr(args, flag[2:].replace("-", "_")):
                raise ValueError(f"{flag} is for --fhir-url, which was not given")
        return None
    if not args.fhir:
        raise ValueError(
            "--fhir-url needs --fhir DIR: the folder whose outbox/ keeps what the server has not yet taken"
        )
    try:
        check_url(args.fhir_url)
    except ValueError:
        raise ValueError(
            "--fhir-url: expected an http:// or https:// URL with a host (the server's base URL)"
        ) from None
    token = TokenFile(args.fhir_token_file, "--fhir-token-file") if args.fhir_token_file else None
    if args.fhir_ca and not args.fhir_url.startswith("https:"):
        raise ValueError("--fhir-ca is for an https:// --fhir-url")
    smart = _smart(args)
    if smart and token:
        raise ValueError("--fhir-token-file or --fhir-client-id: one way to authorise, not both")
    try:
        return Outbox(Path(args.fhir) / "outbox", FhirSender(args.fhir_url, token, args.fhir_ca, smart))
    except OSError as e:
        raise ValueError(f"--fhir {args.fhir}: cannot create its outbox/ ({e.strerror or e})") from None


def hl7_outbox_of(args: argparse.Namespace):
    """The HL7 outbox of ``listen`` or ``watch`` (``--hl7-to``) and the receiver for MSH-5/6, checked
    before the model loads."""
    from pneumolens.integration.hl7_outbox import MllpSender
    from pneumolens.integration.outbox import Outbox

    if not args.hl7_to:
        if args.hl7_tls:
            raise ValueError("--hl7-tls needs --hl7-to")
        return None, ""
    if not args.hl7:
        raise ValueError("--hl7-to needs --hl7 DIR: the folder whose outbox/ keeps what the RIS has not yet taken")
    tls = _hl7_tls(args)
    receiver, _, address = args.hl7_to.rpartition("@")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in receiver for c in "|~\\&\r\n"):
        raise ValueError(f"--hl7-to {args.hl7_to!r}: expected [APP[^FACILITY]@]HOST:PORT")
    try:
        return Outbox(Path(args.hl7) / "outbox", MllpSender(host, int(port), tls=tls), suffix=".hl7"), receiver
    except OSError as e:
        raise ValueError(f"--hl7 {args.hl7}: cannot create its outbox/ ({e.strerror or e})") from None


def _hl7_tls(args: argparse.Namespace):
    """The TLS context for ``--hl7-to`` (``--hl7-tls``), or None for plain TCP."""
    from pneumolens.integration.hl7_outbox import client_tls

    own = (args.hl7_tls_ca, args.hl7_tls_cert, args.hl7_tls_key)
    if not args.hl7_tls:
        if any(own):
            raise ValueError("--hl7-tls-ca, --hl7-tls-cert and --hl7-tls-key need --hl7-tls")
        return None
    if (args.hl7_tls_cert is None) != (args.hl7_tls_key is None):
        raise ValueError("--hl7-tls-cert and --hl7-tls-key go together")
    return client_tls(*own)


def orders_of(args: argparse.Namespace):
    """The order book of ``listen`` or ``watch`` (``--orders``), opened before the model loads."""
    from pneumolens.integration.hl7_orders import OrderBook

    if not args.orders:
        return None
    if not (args.hl7 or args.fhir):
        raise ValueError("--orders files the results of --hl7 or --fhir under their orders: give one of them too")
    return OrderBook(args.orders, keep_days=None)  # the reader keeps what ``orders`` keeps


def cmd_orders(args: argparse.Namespace) -> int:
    from pneumolens.integration.dicom_node import tls_context
    from pneumolens.integration.hl7_orders import OrderBook, serve

    if args.find is not None:
        return _find_order(Path(args.book), args.find)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: expected 1-65535")
    if args.keep_days < 0:
        raise ValueError(f"--keep-days {args.keep_days}: expected 0 (keep every order) or more")
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_ca and not args.tls_cert):
        raise ValueError("--tls-cert and --tls-key go together (and --tls-ca needs them)")
    tls = tls_context(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    try:
        Path(args.book).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{args.book}: cannot create its folder ({e.strerror or e})") from None
    book = OrderBook(args.book, keep_days=args.keep_days or None)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            server = await serve(book, args.host, args.port, tls, args.accession_field)
        except OSError as e:
            raise ValueError(
                f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror or e})"
            ) from None
        transport = "TLS" if tls else "plain TCP"
        print(f"taking orders on {args.host}:{args.port} (MLLP, {transport}) into {args.book}", file=sys.stderr)
        async with server:
            await stop.wait()

    asyncio.run(run())
    print(f"stopped; {len(book)} order(s) in {args.book}", file=sys.stderr)
    return 0


def _find_order(path: Path, accession: str) -> int:
    """``orders BOOK --find ACCESSION``: what the node would file a result of that study under."""
    import dataclasses
    import json

    from pneumolens.integration.hl7_orders import OrderBook

    if not path.is_file():
        raise ValueError(f"{path}: no such order book (pneumolens orders {path} makes it)")
    order = OrderBook(path, keep_days=None).find(accession)
    if order is None:
        print(f"no order for accession number {accession!r} in {path}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in dataclasses.asdict(order).items() if k != "patient"}  # the hash says nothing
    print(json.dumps({**shown, "cancelled": order.cancelled, "patient_checked": bool(order.patient)}, indent=1))
    return 0


def say_outboxes(fhir_outbox, hl7_outbox, stow_outbox=None) -> None:
    for what, box in (("FHIR", fhir_outbox), ("HL7", hl7_outbox), ("STOW-RS", stow_outbox)):
        if box is not None:
            print(
                f"{what}: {box.delivered} delivered, {box.rejected} refused (kept in {box.folder / 'rejected'}), "
                f"{len(box.waiting())} waiting in {box.folder}",
                file=sys.stderr,
            )


def path_or_none(value: str | None) -> Path | None:
    return Path(value) if value else None


def cmd_fhir_key(args: argparse.Namespace) -> int:
    import json

    from pneumolens.integration.smart_auth import jwks, load_key, new_key

    key = new_key(args.key) if args.create else load_key(args.key, flag="")
    print(json.dumps(jwks(key), indent=1))
    if args.create:
        print(f"wrote a new EC P-384 key to {args.key}; register the key set above with the EHR", file=sys.stderr)
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from pneumolens.integration.outbox import find, requeue, summary

    folder = find(Path(args.folder))
    if args.requeue:
        moved = requeue(folder)
        print(
            f"{moved} refused message(s) back in {folder}: a running node sends them within a minute, else at its "
            "start (alerts: the next audit --notify)"
        )
    found = summary(folder)
    since = f" (oldest {found['oldest_waiting']})" if found["waiting"] else ""
    print(f"{found['waiting']} message(s) waiting in {folder}{since}")
    if found["refused"]:
        print(
            f"{found['refused']} refused (oldest {found['oldest_refused']}), each with the receiver's answer in "
            f"{folder / 'rejected'}: mend the cause, then --requeue"
        )
    return 1 if found["waiting"] or found["refused"] else 0
