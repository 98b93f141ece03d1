"""Score candidate per-slice rules on unscored noise draws, without re-running SAM per rule.

    .venv/bin/python studies/slice_rules.py --cases ~/.cache/spdsegment/cases --seeds 1 2 [--jobs 2]
    .venv/bin/python studies/slice_rules.py --load studies_out/slices_seed1.pkl ...   (score again)

Why: a rule that only removes or swaps whole slices of a run (empty a slice, take raw's mask on it)
can be scored exactly from per-slice areas and overlaps with the label. One recorded run of `raw` and
`spd` per pair then scores any number of such rules in seconds, where re-running each would take the
evaluation's hour. The script records, per processed slice, the label's area, raw's and spd's mask
areas and overlaps, the slice's own / kept / borrowed point counts, its flags and the prior's area,
then prints each rule's mean DSC and its losses to raw (SPD < raw - 0.01), the figures the adoption
rule of docs/method.md reads ("fewer losses and no lower mean, on one draw and then another").

Seed 0 is the evaluation's scored draw (README, docs/evaluation): it is refused, so no rule is ever
chosen on a case it is scored on. As a check of the bookkeeping, the rule that changes nothing must
reproduce the recorded spd DSC of every pair.
"""
from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

STUDIES = str(Path(__file__).resolve().parent)
if STUDIES not in sys.path:  # the shared _draws, also when this study is loaded by file path (its tests)
    sys.path.insert(0, STUDIES)
import _draws as draws

Rule = Callable[[dict, dict], "tuple[int, int] | None"]  # (slice, pair) -> replacement (area, overlap) or None


def _record(args: tuple[str, list[str], int, str]) -> list[dict]:
    """Per-slice figures of raw and spd for some cases at one seed (one worker's share)."""
    from SPDSegmentLib.evaluation.cases import find_cases
    from SPDSegmentLib.evaluation.harness import EvalConfig, evaluate_case

    cases_dir, names, seed, cache_dir = args
    backend = draws.study_backend(cache_dir)
    pairs = []
    for case in (c for c in find_cases(cases_dir) if c.name in names):
        for severity in draws.SEVERITIES:
            rows, art = evaluate_case(case, backend, EvalConfig(methods=("raw", "spd"), seed=seed), severity)
            volume = art["volume"]
            label = volume.with_array(art["label"]).slices() > 0
            masks = {m: volume.with_array(art["masks"][m]).slices() > 0 for m in ("raw", "spd")}
            result = art["results"]["spd"]
            with_points = sorted(t for t, p in result.prompts.items() if p)
            per = []
            for t in result.processed_slices:
                d = result.decisions[t]
                per.append({"t": t, "label": int(label[t].sum()),
                            **{f"{m}_area": int(masks[m][t].sum()) for m in masks},
                            **{f"{m}_overlap": int((masks[m][t] & label[t]).sum()) for m in masks},
                            "own": len(result.prompts.get(t, [])), "kept": len(d.with_status("kept")),
                            "borrowed": len(d.with_status("borrowed")), "flags": list(d.flags),
                            "prior_area": int((result.saliency_maps[t] > result.tau).sum())})
            pairs.append({"case": case.name, "severity": severity, "seed": seed,
                          "dsc": {r["method"]: r["dsc"] for r in rows},
                          "first": with_points[0], "last": with_points[-1], "label_total": int(label.sum()),
                          "spd_total": (int(masks["spd"].sum()), int((masks["spd"] & label).sum())), "slices": per})
            print(f"seed {seed} {case.name} {severity}", flush=True)
    return pairs


def record(cases_dir: str, seed: int, jobs: int, cache_dir: str) -> list[dict]:
    """Every case at every severity for one unscored seed, split over ``jobs`` processes."""
    draws.refuse_scored(seed)
    return draws.over_cases(_record, cases_dir, jobs, seed, cache_dir)


def dsc_with(pair: dict, rule: Rule) -> float:
    """spd's volume DSC when every slice the rule names takes the rule's (area, overlap)."""
    area, overlap = pair["spd_total"]
    for s in pair["slices"]:
        replacement = rule(s, pair)
        if replacement is not None:
            area += replacement[0] - s["spd_area"]
            overlap += replacement[1] - s["spd_overlap"]
    total = area + pair["label_total"]
    return 1.0 if total == 0 else 2.0 * overlap / total


def _past_the_curve(s: dict, pair: dict) -> bool:
    return s["t"] < pair["first"] or s["t"] > pair["last"]


def _end_larger_than(k: float) -> Rule:
    """Empty a slice past the curve's last point whose mask is over k x the mask on the curve's end
    slice (a structure tapers at its ends)."""
    def rule(s: dict, pair: dict):
        if not _past_the_curve(s, pair):
            return None
        edge = pair["first"] if s["t"] < pair["first"] else pair["last"]
        edge_area = next(e["spd_area"] for e in pair["slices"] if e["t"] == edge)
        return (0, 0) if s["spd_area"] > k * edge_area else None
    return rule


RULES: dict[str, Rule] = {
    "spd (as run)": lambda s, pair: None,
    "nothing past the curve's ends": lambda s, pair: (0, 0) if _past_the_curve(s, pair) else None,
    **{f"past the ends, not over {k}x the end slice": _end_larger_than(k) for k in (0.8, 1.0, 1.5, 2.0)},
    "raw's mask where points were borrowed": lambda s, pair: (
        (s["raw_area"], s["raw_overlap"]) if s["borrowed"] and s["own"] else None),
}


def score(pairs: list[dict], rules: dict[str, Rule] = RULES) -> list[tuple[str, float, list[str]]]:
    """Each rule's mean DSC and its losses to raw (pairs under raw - 0.01)."""
    for pair in pairs:  # the bookkeeping check
        if abs(dsc_with(pair, lambda s, p: None) - pair["dsc"]["spd"]) > 1e-6:
            raise RuntimeError(f"{pair['case']} {pair['severity']}: the recorded slices do not add up to spd's DSC")
    out = []
    for name, rule in rules.items():
        values = [dsc_with(pair, rule) for pair in pairs]
        losses = [f"{p['case']} {p['severity']} {v - p['dsc']['raw']:+.3f}"
                  for p, v in zip(pairs, values) if v < p["dsc"]["raw"] - 0.01]
        out.append((name, float(np.mean(values)), losses))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="built cases (spdsegment build-cases)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cache-dir", default=draws.DEFAULT_CACHE,
                        help="SAM embedding cache (shared with the other studies and training: encodings are reused)")
    parser.add_argument("--out", default="studies_out", help="where the recorded slices are kept")
    parser.add_argument("--load", nargs="+", help="score recorded .pkl files instead of recording")
    args = parser.parse_args(argv)
    if args.load:
        recorded = [pickle.loads(Path(f).read_bytes()) for f in args.load]
    else:
        if not args.cases:
            parser.error("--cases or --load is needed")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        recorded = []
        for seed in args.seeds:
            pairs = record(args.cases, seed, args.jobs, args.cache_dir)
            Path(args.out, f"slices_seed{seed}.pkl").write_bytes(pickle.dumps(pairs))
            recorded.append(pairs)
    for pairs in recorded:
        raw = np.mean([p["dsc"]["raw"] for p in pairs])
        print(f"\nseed {pairs[0]['seed']}: {len(pairs)} pairs, raw {raw:.4f}")
        for name, mean, losses in score(pairs):
            print(f"  {name:45s} {mean:.4f}  {len(losses):2d} losses  {'; '.join(losses)}")


if __name__ == "__main__":
    sys.exit(main())
