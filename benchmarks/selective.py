"""Which calls is a model least sure of? Risk against coverage on its validation films, and its band.

    python benchmarks/selective.py [--model MODEL] [--data ../shared/data/chest_xray]
                                   [--share S | --risk R [--confidence C]] [--store | --out FILE]

The model's validation films (the patient split its recorded config draws from ``--data``), scored
through the inference path: for each coverage, the calls on the films farthest from the threshold
(in logits), the rest going to a reader; then the ``borderline`` band that holds ``--share`` of these
films (a tenth by default), as computed here and as stored in the model file
(``pneumolens.evaluation.selective``); with ``--risk``, the narrowest band outside which the calls
on these films are wrong at most that share of the time (``band_for_risk``).
Validation only: the test split's figures come from ``pneumolens evaluate`` (its ``selective``).
"""

from __future__ import annotations

import argparse
import json
import time

from pneumolens.checkpoint import load_model, save_model
from pneumolens.evaluation.evaluate import validation_films
from pneumolens.evaluation.selective import (
    BORDERLINE_SHARE,
    band_by_rule,
    borderline_metrics,
    risk_coverage,
)
from pneumolens.inference import default_workers, predict_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model file or run (default: the shipped model)")
    ap.add_argument("--data", default="../shared/data/chest_xray")
    rule = ap.add_mutually_exclusive_group()
    rule.add_argument(
        "--share", type=float, help=f"the share of these films the band holds (default {BORDERLINE_SHARE})"
    )
    rule.add_argument("--risk", type=float, help="the error rate the calls outside the band may have on these films")
    ap.add_argument("--confidence", type=float, help="with --risk: bound the error rate at this confidence")
    where = ap.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        action="store_true",
        help="write the band computed here into the model file (its weights unchanged): how the shipped model, "
        "trained before models recorded a band, got its own",
    )
    where.add_argument("--out", help="write a copy of the model file with this band (its weights unchanged)")
    args = ap.parse_args()
    for name in ("share", "risk", "confidence"):
        if getattr(args, name) is not None and not 0 < getattr(args, name) < 1:
            ap.error(f"--{name} must be between 0 and 1, got {getattr(args, name)}")
    if args.confidence is not None and args.risk is None:
        ap.error("--confidence bounds --risk: give both")
    t0 = time.time()
    loaded = load_model(args.model)
    val = validation_films(loaded, args.data)
    probs, errors = predict_samples(loaded.model, val, loaded.preprocess, num_workers=default_workers(len(val)))
    scored = [s for s in val if s.path in probs]
    y, p, t = [s.label for s in scored], [probs[s.path] for s in scored], loaded.threshold
    print(f"{len(scored)} validation films ({len(errors)} unreadable), threshold {t:.4f}\n")
    print("| coverage | films kept | accuracy | sensitivity | specificity | errors kept | errors deferred |")
    print("|---|---|---|---|---|---|---|")
    for r in risk_coverage(y, p, t):
        print(
            f"| {r['coverage']:.0%} | {r['kept']} | {r['accuracy']:.1%} | {r['sensitivity']:.1%} | "
            f"{r['specificity']:.1%} | {r['errors']} | {r['deferred_errors']} |"
        )
    band = band_by_rule(y, p, t, args.share, args.risk, args.confidence)
    print(
        f"\nband from these films ({band['share']:.1%} of them): {band['low']:.4f} to {band['high']:.4f} "
        f"(logit distance {band['logit_distance']:.3f})"
    )
    print(f"borderline against the rest, with this band: {json.dumps(borderline_metrics(y, p, t, band))}")
    print(f"band in the model file: {json.dumps(loaded.borderline)}")
    apart = borderline_metrics(y, p, t, loaded.borderline)
    print(f"borderline against the rest, with the stored band: {json.dumps(apart)}")
    if args.store or args.out:
        meta = {**loaded.meta, "borderline": band}
        path = save_model(loaded.path if args.store else args.out, loaded.model, meta)
        assert load_model(path).sha256 == loaded.sha256, "the weights changed"
        print(f"stored in {path} (weights sha256 {loaded.sha256[:12]} unchanged)")
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
