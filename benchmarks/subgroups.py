"""Each run's rates by subgroup, on its own validation split and on test.

    python benchmarks/subgroups.py --data ../shared/data/chest_xray RUN [RUN ...]   (default: the shipped model)

RUN is a run directory (its ``split.json`` names its validation films) or ``default`` (the shipped
model, whose validation films are those of any default-preset run with the same split: pass
``--val-from RUN``). The subgroups are ``evaluate``'s (``pneumolens.data.subgroups``): specificity of
the normal series, sensitivity of the pneumonia kinds, at each model's own threshold. Points only;
``pneumolens evaluate`` gives the intervals. A diagnostic: it chooses nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pneumolens.checkpoint import load_model
from pneumolens.data.sources import Sample, check_headers, find_split, patient_id
from pneumolens.data.subgroups import subgroup
from pneumolens.evaluation.evaluate import subgroup_metrics
from pneumolens.inference import predict_samples


def rates(loaded, samples: list[Sample]) -> dict[str, float | None]:
    probs, _ = predict_samples(loaded.model, samples, loaded.preprocess)
    scored = [s for s in samples if s.path in probs]
    m = subgroup_metrics(
        [s.label for s in scored],
        [probs[s.path] for s in scored],
        loaded.threshold,
        [s.patient for s in scored],
        [subgroup(s.path, s.label, s.group) for s in scored],
        n_boot=0,
    )
    return {k: v["value"] for k, v in m.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--val-from", help="run directory whose split.json gives the shipped model's validation films")
    ap.add_argument("runs", nargs="*", default=["default"])
    args = ap.parse_args()
    test, _ = check_headers(find_split(args.data, "test"))
    rows = []
    for run in args.runs:
        split_of = Path(args.val_from) if run == "default" and args.val_from else Path(run)
        loaded = load_model(None if run == "default" else run)
        split = split_of / "split.json"
        val_rates: dict[str, float | None] = {}
        if split.is_file():
            paths = json.loads(split.read_text())["val"]
            val = [Sample(p, int(Path(p).parent.name == "PNEUMONIA"), patient_id(p)) for p in paths]
            val_rates = rates(loaded, val)
        rows.append((run, val_rates, rates(loaded, test)))
    groups = sorted({g for _, v, t in rows for g in (*v, *t)}, key=lambda g: (not g.startswith("NORMAL"), g))

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    head = [f"{where} {g}" for where in ("val", "test") for g in groups]
    print("| run | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for run, v, t in rows:
        print(f"| {run} | " + " | ".join(pct(d.get(g)) for d in (v, t) for g in groups) + " |")
    print("(normal subgroups: specificity; pneumonia subgroups: sensitivity; at each model's threshold)")


if __name__ == "__main__":
    main()
