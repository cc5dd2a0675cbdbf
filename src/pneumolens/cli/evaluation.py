"""``pneumolens evaluate | calibrate | compare | card``: a model measured on labelled films, recalibrated, compared
and described."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pneumolens.cli.common import data_arg, fraction, positive_int, probability, writable


def add_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="score a model on DATA/test (or a class-folder directory / CSV)")
    e.add_argument(
        "--model", default=None, help="model file or run directory (default: the model shipped with pneumolens)"
    )
    data_arg(e)
    e.add_argument("--json", dest="json_out", help="write the metrics as JSON to this file")
    e.add_argument("--report", help="write an HTML report with figures into this directory")
    e.add_argument("--csv", help="write one row per film (label, call, probability, outcome, flags, copy_of) here")
    e.add_argument("--threshold", type=probability, help="override the model's operating point")
    e.add_argument(
        "--split",
        choices=["test", "validation"],
        default="test",
        help="validation: the films the model was validated on (the patient split its recorded config draws from "
        "DATA/train), where thresholds, recipes and epochs are chosen; test (default): DATA/test, for reporting",
    )
    e.add_argument(
        "--group-by",
        metavar="ATTRIBUTE",
        help="report subgroups by a DICOM device or acquisition attribute (e.g. Manufacturer, "
        "ManufacturerModelName, InstitutionName, ViewPosition; never a patient's), by age-band: the patient's "
        "age band from a DICOM header (under 1 year, 1-5, 6-17, 18-64, 65 or more), or by lung-exposure: "
        "whether the median inside the lung mask is above 0.5 (grey lungs)",
    )
    e.add_argument(
        "--prevalence",
        type=fraction,
        nargs="+",
        metavar="P",
        help="shares of films with pneumonia (e.g. 0.1 0.3) at which to give the calls' predictive values "
        "(how often a pneumonia call and a normal call are right there), from the films' sensitivity and "
        "specificity, with patient-bootstrap intervals",
    )
    e.add_argument(
        "--explain",
        default="occlusion",
        choices=["gradcam", "occlusion", "lime", "none"],
        help="with --report: explain the errors with this method (occlusion: the faithful one; gradcam: fastest)",
    )
    e.set_defaults(run=cmd_evaluate)

    c = sub.add_parser("calibrate", help="refit a model's operating point on a site's own labelled films")
    c.add_argument(
        "--model", default=None, help="model file or run directory (default: the model shipped with pneumolens)"
    )
    c.add_argument("--data", required=True, help="the site's films: NORMAL/ and PNEUMONIA/ folders, or a CSV manifest")
    c.add_argument("--out", required=True, help="the recalibrated model file to write (not the model itself)")
    c.add_argument("--policy", help="threshold policy, e.g. sensitivity:0.97 (default: the model's own)")
    c.add_argument(
        "--temperature",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also refit the temperature (probabilities calibrated at the site)",
    )
    c.add_argument(
        "--confidence",
        type=probability,
        help="meet the policy's rate with this confidence (e.g. 0.95: by its Clopper-Pearson lower bound)",
    )
    c.add_argument("--min-per-class", type=positive_int, default=30, help="fewest readable films per class")
    band = c.add_mutually_exclusive_group()
    band.add_argument(
        "--borderline-share",
        type=fraction,
        help="the share of the site's films, those nearest the new threshold, that the borderline band holds "
        "(default: the model's own band rule, a share of 0.1 for the shipped model)",
    )
    band.add_argument(
        "--borderline-risk",
        type=fraction,
        help="instead: the narrowest borderline band outside which the calls on the site's films are wrong at most "
        "this share of the time (e.g. 0.02; with --confidence, by its Clopper-Pearson upper bound)",
    )
    c.add_argument("--json", dest="json_out", help="write the report (old and new operating point) as JSON")
    c.set_defaults(run=cmd_calibrate)

    cp = sub.add_parser(
        "compare", help="is model B better than model A on these films? paired differences with patient intervals"
    )
    cp.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="A and B (model files or run directories); B alone: A is the shipped model",
    )
    cp.add_argument("--data", required=True, help="a dataset root (its test split), class folders, or a CSV manifest")
    cp.add_argument("--threshold-a", type=float, help="A's operating point (default: the one stored in A)")
    cp.add_argument("--threshold-b", type=float, help="B's operating point (default: the one stored in B)")
    cp.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    cp.add_argument("--json", dest="json_out", help="also write the comparison as JSON")
    cp.set_defaults(run=cmd_compare)

    k = sub.add_parser("card", help="a model card (Markdown) from what a model file records, and evaluations of it")
    k.add_argument(
        "--model", default=None, help="model file or run directory (default: the model shipped with pneumolens)"
    )
    k.add_argument(
        "--metrics",
        nargs="+",
        default=[],
        metavar="EVAL.json",
        help="evaluate --json files of this model, each a row of measured figures",
    )
    k.add_argument("--out", help="write the card here (default: print it)")
    k.set_defaults(run=cmd_card)


def cmd_card(args: argparse.Namespace) -> int:
    from pneumolens.checkpoint import atomic_write, load_model
    from pneumolens.evaluation.model_card import model_card, read_evaluations

    loaded = load_model(args.model)
    card = model_card(loaded, read_evaluations(args.metrics, loaded))
    if args.out:
        atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(card, encoding="utf-8"))
        print(args.out)
    else:
        print(card)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pneumolens.checkpoint import load_model
    from pneumolens.evaluation.evaluate import evaluate, format_table

    for flag, path in (("--json", args.json_out), ("--csv", args.csv)):
        writable(flag, path)  # before the films are scored, not after
    writable("--report", args.report, folder=True)
    loaded = load_model(args.model)
    ev = evaluate(
        loaded, args.data, args.threshold, group_by=args.group_by, split=args.split, prevalences=args.prevalence or ()
    )
    print(format_table(ev.metrics))
    for path, reason in ev.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if args.report:
        from pneumolens.evaluation.report import write_report

        explanations = None
        if args.explain != "none":
            from pneumolens.evaluation.error_explanations import explain_errors

            Path(args.report).mkdir(parents=True, exist_ok=True)
            explanations = explain_errors(loaded, ev, args.explain, Path(args.report) / "errors_explained.png")
            ev.metrics["explanations"] = explanations
        title = f"pneumolens evaluation: {loaded.meta.get('name')}"
        html = write_report(ev, loaded.meta, args.report, title=title, explanations=explanations)
        print(f"report: {html}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(ev.metrics, indent=2))
    if args.csv:
        from pneumolens.evaluation.films import write_films_csv

        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        write_films_csv(ev, args.csv)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pneumolens.checkpoint import load_model
    from pneumolens.evaluation.compare import compare, format_comparison

    if len(args.models) > 2:
        raise ValueError(f"compare takes one or two models, got {len(args.models)}: A B, or B against the shipped A")
    writable("--json", args.json_out)
    for flag, t in (("--threshold-a", args.threshold_a), ("--threshold-b", args.threshold_b)):
        if t is not None and not 0 < t < 1:
            raise ValueError(f"{flag} {t}: an operating point lies between 0 and 1")
    if args.n_boot < 100:
        raise ValueError(f"--n-boot {args.n_boot}: at least 100 resamples")
    a, b = (load_model(None), load_model(args.models[0])) if len(args.models) == 1 else map(load_model, args.models)
    c = compare(a, b, args.data, (args.threshold_a, args.threshold_b), n_boot=args.n_boot)
    print(format_comparison(c))
    for skipped in c["skipped"]:
        print(f"skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(c, indent=2))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pneumolens.checkpoint import load_model, save_model
    from pneumolens.evaluation.recalibrate import format_report, recalibrate

    loaded = load_model(args.model)
    out = Path(args.out)
    if out.is_dir() or out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: give a new .safetensors file")
    if out.resolve() == loaded.path.resolve():
        raise ValueError(f"--out {out}: is the model being recalibrated; write the new one beside it")
    r = recalibrate(
        loaded,
        args.data,
        args.policy,
        args.temperature,
        args.min_per_class,
        args.confidence,
        borderline_share=args.borderline_share,
        borderline_risk=args.borderline_risk,
    )
    for path, reason in r.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(format_report(r.report))
    save_model(out, r.model, r.meta)
    print(f"model: {out}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(r.report, indent=2))
    return 0
