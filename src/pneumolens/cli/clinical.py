"""``pneumolens serve | listen | pull | watch | selftest``: the model at work in a department."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from pneumolens.cli.common import NOTICE, db_arg, engine_for, port, positive_int, positive_seconds, tls_flags
from pneumolens.cli.sending import (
    fhir_outbox_of,
    hl7_outbox_of,
    orders_of,
    path_or_none,
    say_outboxes,
    send_on_flags,
    stow_flags,
    stow_outbox_of,
)

# serve's settings read from the environment (service.settings.Settings and the few read where they
# are used; a test keeps the list and the sources alike)
SERVE_ENVIRONMENT = (
    "PNEUMOLENS_MODEL",
    "PNEUMOLENS_BACKEND",
    "PNEUMOLENS_ONNX_PATH",
    "PNEUMOLENS_MAX_UPLOAD_MB",
    "PNEUMOLENS_MAX_CONCURRENT",
    "PNEUMOLENS_DEFAULT_METHOD",
    "PNEUMOLENS_API_TOKEN",
    "PNEUMOLENS_REQUEST_TIMEOUT_S",
    "PNEUMOLENS_SHUTDOWN_GRACE_S",
    "PNEUMOLENS_CORS_ORIGINS",
    "PNEUMOLENS_AUDIT",
    "PNEUMOLENS_AUDIT_URL",
    "PNEUMOLENS_ORDERS",
    "PNEUMOLENS_AUDIT_KEY",  # the audit trail's (monitoring.audit), the films' scope (data.scope)
    "PNEUMOLENS_AUDIT_SALT",
    "PNEUMOLENS_MAX_TRAINING_AGE",
    "PNEUMOLENS_BODY_PARTS",
    "PNEUMOLENS_VIEWS",
    "PNEUMOLENS_SELFTEST_ANSWERS",  # the known answers checked at start (selftest)
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sv = sub.add_parser(
        "serve",
        help="the decision-support web app and API (FastAPI)",
        epilog="Other settings come from the environment: " + ", ".join(SERVE_ENVIRONMENT) + " (README: Web app "
        "and API). Behind a hospital network's address, set PNEUMOLENS_API_TOKEN.",
    )
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all)"
    )
    sv.add_argument("--port", type=port, default=8000, help="port to listen on (default 8000)")
    sv.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    sv.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default=None,
        help="torch (default), or onnx: the model exported to ONNX at start-up and run by onnxruntime",
    )
    sv.add_argument(
        "--orders",
        metavar="BOOK",
        default=None,
        help="answer format=hl7, fhir and fhir-bundle under the RIS's order of a DICOM upload's accession number "
        "(pneumolens orders BOOK)",
    )
    sv.set_defaults(run=cmd_serve)

    ln = sub.add_parser("listen", help="DICOM node: give every incoming CR/DX image a first read (C-STORE SCP)")
    ln.add_argument("--ae-title", default="PNEUMOLENS")
    ln.add_argument("--port", type=port, default=11112, help="DIMSE port (default 11112)")
    ln.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    ln.add_argument("--out", default="dicom-results", help="where the results (DICOM files) are written")
    ln.add_argument("--forward", help="also send each result to AE_TITLE@host:port (C-STORE)")
    ln.add_argument(
        "--sr", action="store_true", help="also write (and forward) a DICOM Structured Report (TID 1500) per image"
    )
    ln.add_argument(
        "--keep",
        metavar="DIR",
        help="also store each image read, as received, in DIR (SOP_INSTANCE_UID.dcm): for a site's own evaluation; "
        "the files hold patient data",
    )
    send_on_flags(ln)
    stow_flags(ln)
    ln.add_argument(
        "--dicomweb-port",
        type=port,
        metavar="PORT",
        help="also take images over DICOMweb (STOW-RS: POST /dicomweb/studies) on this port of --host, with the "
        "node's TLS when given; with --qr, also serve the results there (QIDO-RS, WADO-RS)",
    )
    ln.add_argument(
        "--dicomweb-token-file",
        metavar="FILE",
        help="a bearer token every DICOMweb request must carry, read from FILE (and again whenever it changes)",
    )
    ln.add_argument(
        "--dicomweb-cors",
        metavar="ORIGIN",
        action="append",
        help="a web origin (https://viewer.example) whose pages may call the DICOMweb port from a browser, "
        "as a viewer such as OHIF served from elsewhere does; repeat for more",
    )
    ln.add_argument(
        "--dicomweb-url",
        metavar="URL",
        help="the DICOMweb service's URL as clients reach it (https://proxy.example/dicomweb), for the RetrieveURL "
        "and BulkDataURI of its answers; default: the scheme and Host of each request, then /dicomweb",
    )
    ln.add_argument(
        "--retain-days",
        type=positive_int,
        metavar="DAYS",
        help="delete the node's results (--out, --fhir, --hl7) and kept originals (--keep) older than DAYS, at start "
        "and hourly (only files the node names by UID; never an outbox/); default: keep everything",
    )
    ln.add_argument(
        "--gsps",
        action="store_true",
        help="also write (and forward) a Grayscale Softcopy Presentation State per image: the map's outline and "
        "the call as an overlay a viewer draws on the original",
    )
    ln.add_argument(
        "--notice-not-read",
        action="store_true",
        help="for an image the model is not for (a lateral view, another body part, by its header), also write "
        "(and send on) a Secondary Capture in its study saying the AI did not read it, and why",
    )
    ln.add_argument(
        "--seg",
        action="store_true",
        help="also write (and forward) the map as a DICOM Segmentation (fractional) per image: its graded values "
        "on the original's pixels",
    )
    ln.add_argument(
        "--qr",
        action="store_true",
        help="also answer Study Root C-FIND, C-GET and C-MOVE for the results in --out, and the films in --keep "
        "(a viewer asks the node for them); with --dicomweb-port, QIDO-RS and WADO-RS too",
    )
    ln.add_argument(
        "--qr-dest",
        action="append",
        metavar="AE@HOST:PORT",
        help="a C-MOVE destination the node may send results to (repeatable; needs --qr)",
    )
    ln.add_argument(
        "--qr-dest-tls",
        action="store_true",
        help="send C-MOVE's results to the --qr-dest destinations over TLS, presenting --tls-cert/--tls-key and "
        "checking each destination's certificate with --tls-ca",
    )
    ln.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    db_arg(ln)
    ln.add_argument(
        "--allow-aet", action="append", metavar="AET", help="accept associations only from this calling AE (repeatable)"
    )
    tls_flags(
        ln,
        "--tls",
        "TLS: this node's PEM certificate (with --tls-key)",
        "",
        "require peer certificates signed by this PEM CA (mutual TLS)",
    )
    ln.add_argument(
        "--forward-tls",
        action="store_true",
        help="forward over TLS, as a client with --forward-tls-cert/--forward-tls-key (default: --tls-cert/--tls-key), "
        "checking the destination with --forward-tls-ca (default: --tls-ca)",
    )
    tls_flags(ln, "--forward-tls", "TLS to the destination: the node's PEM client certificate", "the destination's")
    ln.set_defaults(run=cmd_listen)

    pl = sub.add_parser(
        "pull",
        help="ask a PACS (C-FIND, or QIDO-RS) for the CR/DX studies of some dates and have them sent (C-MOVE, or "
        "WADO-RS and STOW-RS) to the node",
    )
    pl.add_argument("--pacs", help="the PACS's Query/Retrieve SCP: AE_TITLE@host:port")
    for flag, metavar, text in (  # pull --dicomweb: the archive's DICOMweb service, and where the images go
        (
            "--dicomweb",
            "URL",
            "instead of --pacs, the DICOMweb service of a PACS or cloud archive (https://pacs.example/dicomweb): "
            "QIDO-RS to find, WADO-RS to retrieve, then --get DIR or --to-url",
        ),
        ("--dicomweb-token-file", "FILE", "a bearer token for --dicomweb, read from FILE"),
        ("--dicomweb-ca", "PEM", "the CA of an https --dicomweb (default: the system's)"),
        (
            "--to-url",
            "URL",
            "with --dicomweb: store each image by STOW-RS there, a `pneumolens listen --dicomweb-port`'s "
            "http://host:port/dicomweb",
        ),
        ("--to-token-file", "FILE", "the bearer token --to-url wants, read from FILE"),
    ):
        pl.add_argument(flag, metavar=metavar, help=text)
    pl.add_argument(
        "--to",
        default="PNEUMOLENS",
        help="move destination: the AE title of a running `pneumolens listen` (the PACS must know its address)",
    )
    pl.add_argument(
        "--get",
        metavar="DIR",
        help="instead of a move, get the images over our own association (C-GET) into DIR, each as received "
        "(SOP_INSTANCE_UID.dcm; they hold patient data): no move destination needed",
    )
    pl.add_argument("--since", help="first study date, YYYY-MM-DD")
    pl.add_argument("--until", help="last study date, YYYY-MM-DD (inclusive)")
    pl.add_argument("--study", action="append", metavar="UID", help="a Study Instance UID (repeatable)")
    pl.add_argument(
        "--modality", action="append", metavar="M", help="series modality to move (repeatable; default CR and DX)"
    )
    pl.add_argument("--limit", type=int, default=200, help="refuse, moving nothing, when more studies match")
    pl.add_argument("--dry-run", action="store_true", help="say what would be moved; move nothing")
    pl.add_argument("--ae-title", default="PNEUMOLENS", help="our calling AE title (the PACS may allow only some)")
    tls_flags(pl, "--tls", "TLS to the PACS: our PEM certificate (with --tls-key and --tls-ca)", "the PACS's")
    pl.set_defaults(run=cmd_pull)

    st = sub.add_parser(
        "selftest",
        help="check this installation: every part loads and the model gives its recorded answer for a synthetic "
        "film (after an install, an upgrade or a move to other hardware); exit 1 if a check fails",
    )
    st.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    db_arg(st)
    st.add_argument("--json", action="store_true", help="the checks as JSON")
    st.add_argument(
        "--answers",
        metavar="FILE",
        help="known answers to check against (default: $PNEUMOLENS_SELFTEST_ANSWERS, else those shipped)",
    )
    st.add_argument(
        "--record",
        metavar="FILE",
        help="add this model's answer for the synthetic film to FILE (a model you ship or validate), and exit",
    )
    st.set_defaults(run=cmd_selftest)

    w = sub.add_parser("watch", help="score each JPEG, PNG, TIFF or DICOM file that appears in a folder, once")
    w.add_argument("folder")
    w.add_argument("--out", help="where <file>.json results go (default: FOLDER/pneumolens-results)")
    w.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    db_arg(w)
    w.add_argument("--poll", type=positive_seconds, default=1.0, help="seconds between scans of the folder")
    w.add_argument("--explain", action="store_true", help="add a Grad-CAM picture (base64 PNG) to each result")
    w.add_argument("--once", action="store_true", help="process what is there now and exit")
    send_on_flags(w)
    w.set_defaults(run=cmd_watch)


def cmd_selftest(args: argparse.Namespace) -> int:
    from pneumolens.selftest import as_json, format_checks, record, run_checks

    if args.record:
        from pneumolens.service.engine import Engine
        from pneumolens.service.settings import Settings

        engine = Engine(Settings(model=args.model, audit=False), known_answer=False)
        print(json.dumps(record(engine, args.record), indent=2))
        return 0
    checks = run_checks(args.model, args.db, args.answers)
    print(as_json(checks) if args.json else format_checks(checks))
    return 1 if any(c.ok is False for c in checks) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pneumolens.service.app import create_app
    from pneumolens.service.settings import Settings

    given = {"model": args.model, "backend": args.backend, "orders": args.orders}
    overrides = {k: v for k, v in given.items() if v is not None}
    print(NOTICE, file=sys.stderr)
    uvicorn.run(create_app(Settings(**overrides)), host=args.host, port=args.port, log_level="info")
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    import signal
    import threading

    from pneumolens.integration.dicom_node import Destination, Node, tls_context
    from pneumolens.monitoring.audit import AuditLog

    forward = Destination.parse(args.forward) if args.forward else None
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_ca and not args.tls_cert):
        raise ValueError("TLS needs --tls-cert and --tls-key together (and both for --tls-ca)")
    tls = tls_context(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    own = (args.forward_tls_cert, args.forward_tls_key, args.forward_tls_ca)
    if any(own) and not args.forward_tls:
        raise ValueError("--forward-tls-cert, --forward-tls-key and --forward-tls-ca need --forward-tls")
    if args.forward_tls:
        if forward is None:
            raise ValueError("--forward-tls needs --forward AET@host:port")
        # the destination's own certificates where given (another PKI than the modalities'), else the node's
        mine = bool(own[0] or own[1])
        cert, key = (own[0], own[1]) if mine else (args.tls_cert, args.tls_key)
        if not (cert and key):
            raise ValueError(
                "--forward-tls needs a client certificate and key: --forward-tls-cert and --forward-tls-key together, "
                "or the node's --tls-cert and --tls-key"
            )
        ca = own[2] or args.tls_ca
        if ca is None:
            raise ValueError("--forward-tls needs --forward-tls-ca (or --tls-ca): the CA that signed the destination")
        names = ("--forward-tls-cert", "--forward-tls-key") if mine else ("--tls-cert", "--tls-key")
        forward.tls = tls_context(cert, key, ca, False, (*names, "--forward-tls-ca" if own[2] else "--tls-ca"))
    allowed = tuple(args.allow_aet or ())
    if any(not 0 < len(a.strip()) <= 16 for a in allowed):
        raise ValueError(f"--allow-aet {allowed}: an AE title has 1 to 16 characters")
    _make_folders(args, ("--out", "--keep", "--fhir", "--hl7"))  # before the model loads and the port opens
    fhir_outbox, (hl7_outbox, receiver) = fhir_outbox_of(args), hl7_outbox_of(args)
    stow_outbox, orders = stow_outbox_of(args), orders_of(args)
    web = _dicomweb_service(args)
    qr = _query_retrieve(args)
    engine = engine_for(args.model)
    node = Node(
        engine,
        AuditLog(args.db),
        Path(args.out),
        args.ae_title,
        forward,
        allowed_aets=allowed,
        tls=tls,
        sr=args.sr,
        gsps=args.gsps,
        seg=args.seg,
        notice=args.notice_not_read,
        keep=Path(args.keep) if args.keep else None,
        retain_days=args.retain_days,
        fhir=Path(args.fhir) if args.fhir else None,
        fhir_outbox=fhir_outbox,
        hl7=Path(args.hl7) if args.hl7 else None,
        hl7_outbox=hl7_outbox,
        hl7_receiver=receiver,
        qr=qr,
        stow_outbox=stow_outbox,
        web=web,
        orders=orders,
    )
    print(NOTICE, file=sys.stderr)
    who = f"from {', '.join(allowed)} only" if allowed else "from any AE title"

    def ready() -> None:
        transport = "TLS" if tls else "plain TCP"
        where = f"{args.host}:{args.port} ({transport}, {who}); results in {args.out}"
        print(f"listening as {args.ae_title} on {where}", file=sys.stderr)
        if web is not None:
            scheme = "https" if tls else "http"
            services = "STOW-RS, QIDO-RS and WADO-RS" if qr is not None else "STOW-RS"
            print(f"and for DICOMweb {services} on {scheme}://{args.host}:{web.port}/dicomweb", file=sys.stderr)

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        node.run(args.host, args.port, stop, on_ready=ready)
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise ValueError(f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror or e})") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(
        f"stored {node.stored} result(s), refused {node.refused} image(s), skipped {node.skipped} "
        f"out of scope, rejected {node.rejected} association(s)",
        file=sys.stderr,
    )
    say_outboxes(fhir_outbox, hl7_outbox, stow_outbox)
    return 0


def _web_url(url: str, flag: str) -> None:
    """``ValueError`` naming ``flag`` unless ``url`` is an http(s) URL with a host (``alert.check_url``)."""
    from pneumolens.monitoring.alert import check_url

    try:
        check_url(url)
    except ValueError:
        raise ValueError(f"{flag} {url}: expected http(s)://host[:port][/path]") from None


def _dicomweb_service(args: argparse.Namespace):
    """``--dicomweb-port``'s service, its flags checked before the model loads (None without it)."""
    from pneumolens.integration.credentials import TokenFile
    from pneumolens.integration.dicomweb_service import DicomwebService

    if args.dicomweb_port is None:
        for given, flag in (
            (args.dicomweb_token_file, "--dicomweb-token-file"),
            (args.dicomweb_cors, "--dicomweb-cors"),
            (args.dicomweb_url, "--dicomweb-url"),
        ):
            if given:
                raise ValueError(f"{flag} is for --dicomweb-port, which was not given")
        return None
    cors = tuple(args.dicomweb_cors or ())
    for origin in cors:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ValueError(f"--dicomweb-cors {origin}: expected an origin, scheme and host (https://viewer.example)")
    if not 0 < args.dicomweb_port < 65536 or args.dicomweb_port == args.port:
        raise ValueError(f"--dicomweb-port {args.dicomweb_port}: expected a free port other than the DIMSE port --port")
    token = TokenFile(args.dicomweb_token_file, "--dicomweb-token-file") if args.dicomweb_token_file else None
    tls = (args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    if args.dicomweb_url:
        _web_url(args.dicomweb_url, "--dicomweb-url")
    return DicomwebService(args.dicomweb_port, token, tls, cors, args.dicomweb_url)


def cmd_watch(args: argparse.Namespace) -> int:
    from pneumolens.integration.send_on import SendOn
    from pneumolens.integration.watch import Watcher
    from pneumolens.monitoring.audit import AuditLog

    folder = Path(args.folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    _make_folders(args, ("--fhir", "--hl7"))
    fhir_outbox, (hl7_outbox, receiver) = fhir_outbox_of(args), hl7_outbox_of(args)
    send_on = SendOn(
        path_or_none(args.fhir), fhir_outbox, path_or_none(args.hl7), hl7_outbox, receiver, orders=orders_of(args)
    )
    watcher = Watcher(
        folder, Path(args.out or folder / "pneumolens-results"), engine_for(args.model), AuditLog(args.db)
    )
    watcher.explain, watcher.send_on = args.explain, send_on
    print(NOTICE, file=sys.stderr)
    if args.once:
        n = watcher.poll_once(settle=False)
        for box in send_on.outboxes():  # one pass now; what is not taken waits for the next run
            box.deliver()
        print(f"processed {n} new file(s)", file=sys.stderr)
    else:
        watcher.run(args.poll)
        print(f"processed {watcher.processed} file(s)", file=sys.stderr)
    say_outboxes(fhir_outbox, hl7_outbox)
    return 0


def _make_folders(args: argparse.Namespace, flags: tuple[str, ...]) -> None:
    """Each folder flag's folder, made before the model loads: one that cannot be made is said at once."""
    for flag in flags:
        folder = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if folder:
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ValueError(f"{flag} {folder}: cannot create the folder ({e.strerror or e})") from None


def cmd_pull(args: argparse.Namespace) -> int:
    from pneumolens.integration.dicom_node import Destination, tls_context
    from pneumolens.integration.dicom_pull import MODALITIES, Pacs, date_range

    if bool(args.pacs) == bool(args.dicomweb):
        raise ValueError("name the PACS once: --pacs AE_TITLE@host:port (DIMSE) or --dicomweb URL (DICOMweb)")
    dates = date_range(args.since, args.until)
    if not dates and not args.study:
        raise ValueError("say which studies: --since, --until or --study (pull never asks a PACS for all it holds)")
    if args.limit < 1:
        raise ValueError(f"--limit {args.limit}: must be at least 1")
    if args.dicomweb:
        return _pull_dicomweb(args, dates)
    for flag in ("dicomweb_token_file", "dicomweb_ca", "to_url", "to_token_file"):
        if getattr(args, flag):
            raise ValueError(f"--{flag.replace('_', '-')} is for --dicomweb, which was not given")
    pacs = Destination.parse(args.pacs, "--pacs")
    if args.tls_cert or args.tls_key or args.tls_ca:
        if not (args.tls_cert and args.tls_key and args.tls_ca):
            raise ValueError("TLS to the PACS needs --tls-cert, --tls-key and --tls-ca together")
    tls = tls_context(args.tls_cert, args.tls_key, args.tls_ca, server=False) if args.tls_cert else None
    modalities = tuple(dict.fromkeys(m.upper() for m in (args.modality or MODALITIES)))
    get_into = Path(args.get) if args.get else None
    if get_into is not None and not args.dry_run:
        get_into.mkdir(parents=True, exist_ok=True)
    kinds = " or ".join(modalities)
    if args.dry_run:
        doing = "dry run, nothing is moved"
    elif args.get:
        doing = f"getting their {kinds} series into {args.get}"
    else:
        doing = f"moving their {kinds} series to {args.to}"
    with Pacs(pacs, args.ae_title, tls, get_into=get_into) as q:
        return _pull_found(q, args, dates, modalities, pacs.ae_title, doing)


def _pull_found(q, args: argparse.Namespace, dates: str, modalities: tuple[str, ...], source: str, doing: str) -> int:
    """The studies ``q`` (a ``Pacs`` or a ``WebPacs``) finds pulled, unless more than ``--limit``
    match; 1 when a study had a problem."""
    from pneumolens.integration.dicom_pull import pull_studies

    studies = sorted(q.studies(dates, args.study or ()), key=lambda study: study.date)
    if len(studies) > args.limit:
        raise ValueError(
            f"{len(studies)} studies match, more than --limit {args.limit}: nothing was moved; "
            "narrow the dates or raise the limit"
        )
    print(f"{len(studies)} studies match at {source}; {doing}")
    return 1 if pull_studies(q, studies, modalities, print, destination=args.to, dry_run=args.dry_run) else 0


def _pull_dicomweb(args: argparse.Namespace, dates: str) -> int:
    """``pull --dicomweb``: QIDO-RS and WADO-RS, then the images into --get or by STOW-RS to --to-url."""
    from pneumolens.integration.credentials import TokenFile
    from pneumolens.integration.dicom_pull import MODALITIES
    from pneumolens.integration.dicomweb_pull import WebPacs

    for flag, url in (("--dicomweb", args.dicomweb), ("--to-url", args.to_url)):
        if url:
            _web_url(url, flag)
    if args.dicomweb_ca and not Path(args.dicomweb_ca).is_file():
        raise ValueError(f"--dicomweb-ca {args.dicomweb_ca}: no such file")
    if bool(args.get) == bool(args.to_url) and not args.dry_run:
        raise ValueError("with --dicomweb, say where the images go: --get DIR or --to-url URL (one of them)")
    if args.to_token_file and not args.to_url:
        raise ValueError("--to-token-file is for --to-url, which was not given")
    if args.tls_cert or args.tls_key or args.tls_ca:
        raise ValueError("--tls-cert, --tls-key and --tls-ca are for --pacs; an https --dicomweb takes --dicomweb-ca")
    token = TokenFile(args.dicomweb_token_file, "--dicomweb-token-file") if args.dicomweb_token_file else None
    to_token = TokenFile(args.to_token_file, "--to-token-file") if args.to_token_file else None
    modalities = tuple(dict.fromkeys(m.upper() for m in (args.modality or MODALITIES)))
    get_into = Path(args.get) if args.get else None
    if get_into is not None and not args.dry_run:
        get_into.mkdir(parents=True, exist_ok=True)
    where = f"into {args.get}" if args.get else f"to {args.to_url}"
    kinds = " or ".join(modalities)
    doing = "dry run, nothing is moved" if args.dry_run else f"retrieving their {kinds} series {where}"
    with WebPacs(args.dicomweb, token, args.dicomweb_ca, get_into, args.to_url, to_token) as q:
        return _pull_found(q, args, dates, modalities, args.dicomweb, doing)


def _query_retrieve(args: argparse.Namespace):
    """``listen --qr``: the node's results served to C-FIND, C-GET and C-MOVE (``--qr-dest``)."""
    from pneumolens.integration.dicom_node import Destination, tls_context
    from pneumolens.integration.dicom_qr import QueryRetrieve, ResultStore

    if not args.qr:
        if args.qr_dest or args.qr_dest_tls:
            raise ValueError("--qr-dest and --qr-dest-tls are for C-MOVE of --qr, which was not given")
        return None
    if args.qr_dest_tls and not args.qr_dest:
        raise ValueError("--qr-dest-tls needs --qr-dest AE@host:port")
    if args.qr_dest_tls and not (args.tls_cert and args.tls_key and args.tls_ca):
        raise ValueError("--qr-dest-tls needs --tls-cert, --tls-key and --tls-ca: the node's certificate and its CA")
    tls = tls_context(args.tls_cert, args.tls_key, args.tls_ca, False) if args.qr_dest_tls else None
    destinations = {}
    for text in args.qr_dest or ():
        dest = Destination.parse(text, "--qr-dest")
        if not 0 < len(dest.ae_title.strip()) <= 16:
            raise ValueError(f"--qr-dest {text!r}: an AE title has 1 to 16 characters")
        destinations[dest.ae_title.strip()] = (dest.host, dest.port)
    store = ResultStore(Path(args.out), Path(args.keep) if args.keep else None)  # --keep: the films too
    return QueryRetrieve(store, args.ae_title, destinations, tls)
