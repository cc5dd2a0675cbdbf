"""Reading films with a model: ``predict``, ``explain`` and ``segment`` of files and folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pneumolens.cli.common import NOTICE, data_arg, engine_for, patient_age, positive_int, writable


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="probability of pneumonia for each image")
    p.add_argument("images", nargs="+", help="JPEG, PNG, TIFF or DICOM files, or folders (walked recursively)")
    p.add_argument("--csv", help="write one row per file (path, probability, label, flags, error) here")
    p.add_argument(
        "--model", default=None, help="model file or run directory (default: the model shipped with pneumolens)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per image per line")
    p.add_argument(
        "--age",
        type=patient_age,
        help="the patient's age where the files do not say it (a JPEG or PNG): years (45, 2.5) or a DICOM age "
        "(030M), for the older_than_training caution; used instead of a DICOM header's; never printed",
    )
    p.set_defaults(run=cmd_predict)

    x = sub.add_parser("explain", help="explain a prediction (Grad-CAM, LIME or occlusion), or rate the methods")
    x.add_argument(
        "image",
        nargs="*",
        help="JPEG, PNG, TIFF or DICOM file; or several, or folders (walked recursively), each explained into "
        "--out-dir (omit with --evaluate)",
    )
    x.add_argument(
        "--model", default=None, help="model file or run directory (default: the model shipped with pneumolens)"
    )
    x.add_argument("--method", default="occlusion", help="occlusion (default: the faithful one), gradcam or lime")
    x.add_argument("--out", help="write the picture here (PNG; one image)")
    x.add_argument(
        "--out-dir",
        help="for several images or a folder: write <stem>_<method>.png here (default: explanations; "
        "<stem>-2_... for a second file of the same name)",
    )
    x.add_argument("--json", action="store_true", help="print a JSON object")
    x.add_argument(
        "--dicom-out",
        metavar="DIR",
        help="for a DICOM IMAGE: write into DIR what `listen --sr --gsps --seg` would send back (the picture, the "
        "Structured Report, the presentation state, the map as a segmentation), to import or view without a node",
    )
    x.add_argument("--layer", help="Grad-CAM layer (default: the model's last feature block)")
    x.add_argument("--samples", type=positive_int, default=1000, help="LIME perturbation samples")
    x.add_argument("--window", type=positive_int, help="occlusion window, model-input pixels")
    x.add_argument("--stride", type=positive_int, help="occlusion stride, model-input pixels")
    x.add_argument("--seed", type=int, default=0, help="LIME's random seed")
    x.add_argument("--evaluate", action="store_true", help="rate every method on --data's test images")
    data_arg(x, required=False)
    x.add_argument("--n", type=positive_int, default=20, help="images for --evaluate (stratified)")
    x.set_defaults(run=cmd_explain)

    s = sub.add_parser("segment", help="lung masks, overlays and plausibility flags for each image")
    s.add_argument("images", nargs="+", help="JPEG, PNG, TIFF or DICOM files, or folders (walked recursively)")
    s.add_argument(
        "--out-dir",
        default="segmentations",
        help="where <stem>_mask.png and <stem>_overlay.png go (<stem>-2_... for a second file of the same name)",
    )
    s.add_argument("--json", action="store_true", help="one JSON object per image per line")
    s.add_argument("--segmenter", help="a lung model file (default: the one shipped with pneumolens)")
    s.set_defaults(run=cmd_segment)


def cmd_explain(args: argparse.Namespace) -> int:
    from pneumolens.checkpoint import load_model
    from pneumolens.explain import explain_image

    options = {"layer": args.layer, "n_samples": args.samples, "window": args.window, "stride": args.stride}
    if args.evaluate:
        from pneumolens.explain.evaluate import evaluate_methods, format_table

        if not args.data:
            raise ValueError("--evaluate needs --data")
        results = evaluate_methods(load_model(args.model), args.data, n=args.n, seed=args.seed, **options)
        print(json.dumps(results, indent=2) if args.json else format_table(results))
        return 0
    if not args.image:
        raise ValueError("give an IMAGE to explain, or --evaluate with --data")
    many = len(args.image) > 1 or Path(args.image[0]).is_dir()
    if many:
        for flag, value in (("--out", args.out), ("--dicom-out", args.dicom_out)):
            if value:
                raise ValueError(f"{flag} is for one image; for several, or a folder, the pictures go to --out-dir")
    elif args.out_dir:
        raise ValueError("--out-dir is for several images or a folder; for one image, --out names its picture")
    own = (
        ("--layer", args.layer, "gradcam"),
        ("--window", args.window, "occlusion"),
        ("--stride", args.stride, "occlusion"),
    )
    for flag, value, method in own:
        if value is not None and args.method != method:  # said, rather than ignored
            raise ValueError(f"{flag} applies to --method {method} only, not {args.method}")
    if many:
        return _explain_many(args, options)
    args.image = args.image[0]
    if args.dicom_out:  # the node's engine loads the model itself
        return _dicom_objects(args)
    e = explain_image(load_model(args.model), args.image, args.method, seed=args.seed, **options)
    if args.out:
        from pneumolens.explain.render import explanation_image

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        explanation_image(e).save(args.out)
    record = e.to_dict()
    if args.out:
        record["out"] = args.out
    if args.json:
        print(json.dumps(record))
    else:
        print(f"{e.path}\t{e.method}\t{e.label}\tP(pneumonia)={e.probability:.4f}\t{e.seconds:.2f}s{_warned(e)}")
        print(NOTICE, file=sys.stderr)
    return 0


def _warned(e) -> str:
    """The flags' sentence as ``predict``'s lines end with it: a tab and ``WARNING: ...``, or nothing."""
    from pneumolens.lungs.flags import describe

    said = describe(e.flags)
    return f"\tWARNING: {said}" if said else ""


def _explain_many(args: argparse.Namespace, options: dict) -> int:
    """``explain`` of several images or folders: a picture each in ``--out-dir``, one line (or JSON
    object) each, a file that cannot be read said and passed over (exit 1 at the end)."""
    from pneumolens.checkpoint import load_model
    from pneumolens.data.images import ImageReadError
    from pneumolens.explain import explain_image
    from pneumolens.explain.render import explanation_image

    loaded = load_model(args.model)
    films, out = _films_and_outputs(args.image, args.out_dir or "explanations")
    failed = 0
    for path, stem in films:
        try:
            e = explain_image(loaded, path, args.method, seed=args.seed, **options)
        except ImageReadError as err:
            failed += 1
            _said_unreadable(path, err, args.json)
            continue
        picture = out / f"{stem}_{e.method}.png"
        explanation_image(e).save(picture)
        if args.json:
            print(json.dumps({**e.to_dict(), "out": str(picture)}))
        else:
            print(f"{e.path}\t{e.method}\t{e.label}\tP(pneumonia)={e.probability:.4f}\t{picture}{_warned(e)}")
    print(NOTICE, file=sys.stderr)
    return 1 if failed else 0


def _dicom_objects(args: argparse.Namespace) -> int:
    """``explain IMAGE.dcm --dicom-out DIR``: the node's objects for one DICOM file on disk."""
    import pydicom
    from pydicom.uid import generate_uid

    from pneumolens.checkpoint import atomic_write
    from pneumolens.data.dicom import is_dicom
    from pneumolens.data.images import read_image
    from pneumolens.data.scope import header_flags
    from pneumolens.integration.dicom_node import result_objects

    path = Path(args.image)
    if not path.is_file():
        raise FileNotFoundError(f"{args.image}: no such file")
    with path.open("rb") as f:
        if not is_dicom(f.read(132), path.name):
            raise ValueError(f"--dicom-out needs a DICOM file; {args.image} is not one")
    for flag, value in (("--layer", args.layer), ("--window", args.window), ("--stride", args.stride)):
        if value is not None:
            raise ValueError(f"--dicom-out writes what the node writes, with its map settings: drop {flag}")
    # the header's flags (an adult's age) and no heatmap PNG, as the node reads an image (Node.store)
    result = engine_for(args.model).analyse(
        read_image(path), explain=True, method=args.method, from_header=header_flags(path), heatmap_png=False
    )
    series: dict[str, str] = {}
    made = result_objects(
        pydicom.dcmread(path),
        result,
        lambda study, modality="OT": series.setdefault(modality, generate_uid()),
        sr=True,
        gsps=True,
        seg=True,
    )
    out = Path(args.dicom_out)
    out.mkdir(parents=True, exist_ok=True)
    for ds in made:
        target = out / f"{ds.SOPInstanceUID}.dcm"
        atomic_write(target, lambda tmp, ds=ds: ds.save_as(tmp, enforce_file_format=True))
        print(f"{target}\t{ds.Modality}")
    print(NOTICE, file=sys.stderr)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from pneumolens.data.images import ImageReadError, read_image
    from pneumolens.lungs.flags import describe, lung_fraction, plausibility_flags
    from pneumolens.lungs.render import mask_image, overlay_image
    from pneumolens.lungs.segment import LungSegmenter

    seg = LungSegmenter.from_file(args.segmenter) if args.segmenter else LungSegmenter.shipped()
    films, out = _films_and_outputs(args.images, args.out_dir)
    failed = 0
    for path, stem in films:
        try:
            gray = read_image(path)
        except ImageReadError as e:
            failed += 1
            _said_unreadable(path, e, args.json)
            continue
        low, full = seg.masks(gray)
        mask_png, overlay_png = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
        mask_image(full).save(mask_png)
        overlay_image(gray, full).save(overlay_png)
        flags = plausibility_flags(low, gray)
        record = {
            "path": path,
            "lung_fraction": round(lung_fraction(full), 4),
            "flags": flags,
            "mask": str(mask_png),
            "overlay": str(overlay_png),
        }
        if args.json:
            print(json.dumps(record))
        else:
            note = describe(flags) or "ok"
            print(f"{path}\tlung_fraction={record['lung_fraction']:.3f}\t{note}")
    return 1 if failed else 0


def _films_and_outputs(images: list[str], out_dir: str) -> tuple[list[tuple[str, str]], Path]:
    """(path, output stem) of every film the arguments name (folders walked), and the output folder,
    made: what ``segment`` and ``explain`` of several films write into."""
    paths = _expand(images)
    if not paths:
        raise ValueError(f"no JPEG, PNG, TIFF or DICOM files in {', '.join(images)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return list(zip(paths, _unique_stems(paths), strict=True)), out


def _said_unreadable(path: str, error: Exception, as_json: bool) -> None:
    print(f"error: {error}", file=sys.stderr)
    if as_json:
        print(json.dumps({"path": path, "error": getattr(error, "reason", str(error))}))


def _unique_stems(paths: list[str]) -> list[str]:
    """One output name per input: the file's stem, then ``stem-2``, ``stem-3``... for later files of
    the same name (``NORMAL/x.png`` and ``PNEUMONIA/x.png``, ``x.png`` and ``x.dcm``), compared without
    case so that no file system folds two into one."""
    taken: set[str] = set()
    stems = []
    for path in paths:
        stem, n = Path(path).stem, 1
        name = stem
        while name.casefold() in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.casefold())
        stems.append(name)
    return stems


def _expand(paths: list[str]) -> list[str]:
    """Files as given, folders walked recursively for JPEG / PNG / TIFF / DICOM files (sorted), the
    other files of a folder said on stderr."""
    from pneumolens.data.sources import image_files, said_left_out

    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            left_out: list[Path] = []
            out += sorted(str(f) for f in image_files(p, left_out=left_out))  # broken links too: each gets its error
            if note := said_left_out(p, left_out):
                print(f"note: {note}", file=sys.stderr)
        else:
            out.append(str(p))
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    """Each file's line (or JSON object, or CSV row) as its batch is scored. A CSV is written as
    ``FILE.partial`` and renamed to ``FILE`` once every file is in it: a run stopped half-way keeps
    the rows it wrote, under a name that says they are not all."""
    import csv

    from pneumolens.inference import Predictor
    from pneumolens.lungs.flags import MEASURES

    writable("--csv", args.csv)  # before the films are read, not after
    predictor = Predictor.from_checkpoint(args.model)
    paths = _expand(args.images)
    if not paths:
        raise ValueError(f"no JPEG, PNG, TIFF or DICOM files in {', '.join(args.images)}")
    preds = predictor.iter_paths(paths, progress=bool(args.csv), age=args.age)
    if args.csv:
        target = Path(args.csv)
        partial = target.with_name(target.name + ".partial")
        n = failed = 0
        with open(partial, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
            w = csv.writer(f)
            w.writerow(["path", "probability", "label", "flags", *MEASURES, "error"])
            try:
                for pred in preds:
                    if pred.error:
                        failed += 1
                        print(f"error: {pred.path}: {pred.error}", file=sys.stderr)
                    prob = "" if pred.probability is None else f"{pred.probability:.6f}"
                    measured = ["" if v is None else f"{v:.6g}" for v in (pred.measures.get(m) for m in MEASURES)]
                    w.writerow([pred.path, prob, pred.label or "", " ".join(pred.flags), *measured, pred.error or ""])
                    f.flush()
                    n += 1
            except KeyboardInterrupt:
                print(f"pneumolens: interrupted; the {n} row(s) written are kept in {partial}", file=sys.stderr)
                return 130
        partial.replace(target)
        print(f"{n - failed} predicted, {failed} failed: {args.csv}")
        return 0  # a bad file is a row, not a failed run
    failed = 0
    for pred in preds:
        if pred.error:
            failed += 1
            print(f"error: {pred.path}: {pred.error}", file=sys.stderr)
        if args.json:
            print(json.dumps(pred.to_dict()), flush=True)
        elif not pred.error:
            note = f"\tWARNING: {pred.warning}" if pred.warning else ""
            print(f"{pred.path}\t{pred.probability:.4f}\t{pred.label}{note}", flush=True)
    if not args.json:
        print(NOTICE, file=sys.stderr)
    return 1 if failed else 0
