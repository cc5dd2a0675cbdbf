"""``pneumolens audit | review``: watching a deployed model, its trail, drift and agreement with the readers."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pneumolens.cli.common import db_arg, fraction, positive_int

FLOOR_RATES = ("sensitivity", "specificity")  # audit --agreement --min-RATE


def add_parsers(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("audit", help="list the audit trail of predictions (no patient identifiers are stored)")
    a.add_argument("--since", help="ISO date/time (UTC) or an age: 30m, 12h, 7d")
    a.add_argument("--csv", action="store_true", help="CSV on stdout")
    db_arg(a)
    act = a.add_mutually_exclusive_group()
    act.add_argument("--verify", action="store_true", help="check the hash chain; exit status 1 if it is broken")
    act.add_argument(
        "--prune-before",
        metavar="WHEN",
        help="retention: remove the rows older than WHEN (ISO date/time or an age such as 365d); the prune is recorded",
    )
    act.add_argument(
        "--drift",
        metavar="WHEN",
        help="compare the predictions since WHEN (ISO date/time or an age such as 7d) with those before it (from "
        "--since on): refusals, calls, probabilities, flags and the films' measures; exit status 1 on drift, 2 if "
        "too few to compare",
    )
    act.add_argument(
        "--agreement",
        action="store_true",
        help="the model's calls against the clinicians' reads recorded with `pneumolens review` (reviews dated from "
        "--since on)",
    )
    a.add_argument("--alpha", type=float, default=0.01, help="--drift: family-wise significance level (Bonferroni)")
    a.add_argument(
        "--by",
        choices=("model", "device"),
        default="model",
        help="--agreement: a row per model (default) or per DICOM device (make and model), floors checked per row",
    )
    a.add_argument(
        "--min-reads",
        type=positive_int,
        default=10,
        metavar="N",
        help="--agreement: reads a rate needs before its floor is tested (fewer: exit status 2 unless another "
        "rate is below its floor)",
    )
    for rate in FLOOR_RATES:
        a.add_argument(
            f"--min-{rate}",
            type=fraction,
            metavar="F",
            help=f"--agreement: exit status 1 (and --notify's alert) when a model's {rate} against the reads is "
            f"credibly below F (0-1): the upper end of its Wilson 95%% interval under it",
        )
    a.add_argument("--device", help="--drift: only the inputs from this DICOM device (make and model, as listed)")
    a.add_argument(
        "--notify",
        metavar="URL",
        help="--drift, --agreement with a floor: on drift or a rate below its floor, also POST the alert as JSON to "
        "this webhook (a one-line 'text', the whole 'report')",
    )
    a.set_defaults(run=cmd_audit)

    rv = sub.add_parser(
        "review",
        help="record a clinician's read of an image or study the audit trail holds a prediction for "
        "(`audit --agreement` compares the model's calls with these reads)",
    )
    rv.add_argument("image", nargs="?", help="the image file that was read (identified by its SHA-256)")
    rv.add_argument("--sha256", help="or the image's SHA-256, as `audit` lists it")
    rv.add_argument("--study", help="or the Study Instance UID of a DICOM study (stored salted and hashed)")
    rv.add_argument("--label", choices=("NORMAL", "PNEUMONIA"), help="the clinician's read")
    rv.add_argument(
        "--csv",
        metavar="FILE",
        help="or many reads at once (a RIS export): columns label and one of sha256, path (relative to FILE), study",
    )
    db_arg(rv)
    rv.set_defaults(run=cmd_review)


def cmd_audit(args: argparse.Namespace) -> int:
    from pneumolens.monitoring.audit import AuditLog, format_table, parse_since, write_csv

    audit = AuditLog(args.db)
    if args.verify:
        report = audit.verify()
        print(report)
        return 0 if report.problem is None else 1
    if args.prune_before:
        before = parse_since(args.prune_before, "--prune-before")
        removed = audit.prune(before)
        note = "; the removal is recorded in the trail" if removed else ""
        print(f"removed {removed} row(s) dated before {before.isoformat(timespec='seconds')}{note}")
        return 0
    since = parse_since(args.since) if args.since else None
    if args.device and not args.drift:
        raise ValueError("--device chooses the inputs of --drift; give --drift too")
    if args.notify and not (args.drift or args.agreement):
        raise ValueError("--notify sends the alert of --drift or --agreement; give one of them too")
    floors = {rate: getattr(args, f"min_{rate}") for rate in FLOOR_RATES if getattr(args, f"min_{rate}")}
    if floors and not args.agreement:
        raise ValueError("--min-sensitivity and --min-specificity are floors for --agreement; give --agreement too")
    if args.agreement:
        return _agreement(audit, since, floors, args.notify, args.min_reads, args.by)
    if args.drift:
        from pneumolens.monitoring.alert import alert_text, check_url
        from pneumolens.monitoring.drift import drift_in

        if args.notify:
            check_url(args.notify)
        report = drift_in(audit, parse_since(args.drift, "--drift"), since, args.alpha, args.device)  # too few: exit 2
        print(report)
        if args.notify:  # the drift sets the exit status whether or not its alert gets through
            text = alert_text(report, args.device) if report.drift else None
            _alert(audit, args.notify, text, report.as_dict())
        return 1 if report.drift else 0
    rows = audit.rows(since=since)
    if args.csv:
        write_csv(rows, sys.stdout)
    else:
        print(format_table(rows))
        print(f"{len(rows)} row(s)", file=sys.stderr)
    return 0


def _agreement(audit, since, floors: dict[str, float], url: str | None, min_reads: int, by: str) -> int:
    """``audit --agreement``: the table; with floors, exit status 1 (and the alert to ``url``) when a
    rate is credibly below its floor, else 2 when a floor has fewer than ``min_reads`` reads to test."""
    from pneumolens.monitoring.agreement import agreement_in, check_floors

    if url:
        from pneumolens.monitoring.alert import check_url

        check_url(url)
    found = agreement_in(audit, since)
    print(found.render(by))
    low, untested = check_floors(found.table(by), floors, min_reads)
    for line in low:
        print(f"BELOW FLOOR: {line}")
    for line in untested:
        print(f"too few reads: {line}")
    if url:  # the shortfall sets the exit status whether or not its alert gets through
        import socket

        host = socket.gethostname()
        text = f"pneumolens agreement alert on {host}: " + "; ".join(low) + " (against the readers' reads)"
        _alert(
            audit,
            url,
            text if low else None,
            {"rows": found.table(by), "below_floor": low, "unmatched": found.unmatched},
        )
    return 1 if low else (2 if untested else 0)


def _alert(audit, url: str, text: str | None, report: dict) -> None:
    """Send the alerts an earlier run could not deliver, then this one (``text``; None: none), keeping
    it when it cannot be delivered (``pneumolens.monitoring.alert.deliver``)."""
    from pneumolens.monitoring.alert import deliver, outbox_for

    said, problems = deliver(url, text, report, outbox_for(audit.url))
    for line in said:
        print(line)
    for line in problems:
        print(f"pneumolens audit: {line}", file=sys.stderr)


def cmd_review(args: argparse.Namespace) -> int:
    from pneumolens.monitoring.audit import AuditLog, sha256_bytes

    if args.csv is not None:
        return _review_file(args)
    if sum(x is not None for x in (args.image, args.sha256, args.study)) != 1:
        raise ValueError("name what was read: an IMAGE file, --sha256 HEX or --study UID (one of them), or --csv")
    if args.label is None:
        raise ValueError("--label: give the read, NORMAL or PNEUMONIA")
    digest = args.sha256
    if args.image is not None:
        path = Path(args.image)
        if not path.is_file():
            raise FileNotFoundError(f"{args.image}: no such file")
        digest = sha256_bytes(path.read_bytes())
    if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"--sha256 {digest!r}: give the 64 hex digits the audit trail lists")
    try:
        found = AuditLog(args.db).review(args.label, input_sha256=digest, study_uid=args.study)
    except LookupError as e:
        print(f"pneumolens review: {e}", file=sys.stderr)
        return 1
    verdict = "agrees with" if found["decision"] == args.label else "differs from"
    print(
        f"recorded: the read {args.label} {verdict} the model's call {found['decision']} "
        f"(p={found['probability']:.3f}, {found['time']}, model {str(found['model_sha256'])[:12]})"
    )
    return 0


def _review_file(args: argparse.Namespace) -> int:
    """``review --csv FILE``: every row checked first, then each recorded; exit status 1 when some
    name nothing the trail holds (listed by row)."""
    from pneumolens.monitoring.agreement import read_reads, record_reads
    from pneumolens.monitoring.audit import AuditLog

    if any(x is not None for x in (args.image, args.sha256, args.study, args.label)):
        raise ValueError("--csv holds the reads: drop IMAGE, --sha256, --study and --label")
    path = Path(args.csv)
    if not path.is_file():
        raise FileNotFoundError(f"--csv {args.csv}: no such file")
    recorded, missing = record_reads(AuditLog(args.db), read_reads(path))
    print(f"recorded {recorded} read(s)")
    if missing:
        rows = ", ".join(map(str, missing))
        print(
            f"pneumolens review: {len(missing)} row(s) name nothing the audit trail holds: rows {rows}", file=sys.stderr
        )
        return 1
    return 0
