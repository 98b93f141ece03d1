"""Score candidate per-slice rules on unscored noise draws, without re-running SAM per rule.

    .venv/bin/python studies/slice_rules.py --cases ~/.cache/spdsegment/cases --seeds 1 2 [--jobs 2]
    .venv/bin/python studies/slice_rules.py --load studies_out/slices_seed1.pkl ...   (score again)

Why: a rule that only removes or swaps whole slices of a run (empty a slice, take raw's mask on it)
can be scored exactly from per-slice areas and overlaps with the label. One recorded run of `raw`,
`local` and `spd` per pair then scores any number of such rules in seconds, where re-running each
would take the evaluation's hour. The script records, per processed slice, the label's area, the three
masks' areas and overlaps, SAM's predicted IoU of raw's and spd's decodes, the slice's own / kept /
borrowed point counts, its flags and the prior's area, and per pair the run's structure radius (the
one the pipeline sizes boxes by). Rules may read all of that, never the label. It then prints each
rule's mean DSC and its losses to raw (SPD < raw - 0.01), the figures the adoption rule of
docs/method.md reads ("fewer losses and no lower mean, on one draw and then another").

Seed 0 is the evaluation's scored draw (README, docs/evaluation): it is refused, so no rule is ever
chosen on a case it is scored on. As a check of the bookkeeping, the rule that changes nothing must
reproduce the recorded spd DSC of every pair.
"""
from __future__ import annotations

import argparse
import pickle
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np

STUDIES = str(Path(__file__).resolve().parent)
if STUDIES not in sys.path:  # the shared _draws, also when this study is loaded by file path (its tests)
    sys.path.insert(0, STUDIES)
import _draws as draws

from SPDSegmentLib.method.pipeline import SegmentParams

THIN_MM = SegmentParams().thick_radius_mm  # the pipeline's line between a thin structure and a thick one
METHODS = ("spd", "raw", "local")  # spd first: the other two run on its maps, as in the evaluation
Rule = Callable[[dict, dict], "tuple[int, int] | None"]  # (slice, pair) -> replacement (area, overlap) or None


class _SamScores:
    """SAM's predicted IoU of each decode of a run's main pass, by the slice being segmented.

    The pipeline reports ``segmenting slice t`` before each slice's decodes; the prior's decodes come
    before the first report and the leak limit's re-decodes after the last, and neither is counted."""

    def __init__(self, backend, pipeline_module) -> None:
        self._backend, self._pipeline = backend, pipeline_module
        self._decode = backend.decode
        self._own_decode = "decode" in vars(backend)  # an attribute of this backend, not its class's method
        self._limit = pipeline_module._limit_leaks
        self.slice: int | None = None
        self.scores: dict[int, list[float]] = {}

    def __enter__(self) -> Self:
        """Count the backend's decodes, and stop counting when the leak limit starts, until exit."""
        self._backend.decode = self.decode
        self._pipeline._limit_leaks = self.limit_leaks
        return self

    def __exit__(self, *exc) -> None:
        if self._own_decode:
            self._backend.decode = self._decode
        else:
            del self._backend.decode  # the class's method shows again
        self._pipeline._limit_leaks = self._limit

    def progress(self, fraction: float, message: str) -> None:
        found = re.match(r"segmenting slice (\d+) ", message)
        self.slice = int(found.group(1)) if found else None

    def decode(self, emb, points_rc=None, box_rc=None):
        out = self._decode(emb, points_rc, box_rc)
        if self.slice is not None:
            self.scores.setdefault(self.slice, []).append(out.score)
        return out

    def limit_leaks(self, *args, **kwargs):
        self.slice = None
        return self._limit(*args, **kwargs)

    def per_slice(self) -> dict[int, float]:
        return {t: float(np.mean(v)) for t, v in self.scores.items()}


def _record(args: tuple[str, list[str], int, str]) -> list[dict]:
    """Per-slice figures of raw, local and spd for some cases at one seed (one worker's share). The
    three run as the evaluation runs them (spd first; raw and local on spd's maps, without
    propagation or the leak limit), with SAM's predicted IoU per slice for raw and spd."""
    from SPDSegmentLib.evaluation.harness import PROMPT_METHODS
    from SPDSegmentLib.evaluation.metrics import dice
    from SPDSegmentLib.method import pipeline
    from SPDSegmentLib.method.rendering import run_radius_px
    from SPDSegmentLib.method.saliency import load_prior

    cases_dir, names, seed, cache_dir = args
    backend = draws.study_backend(cache_dir)
    prior = load_prior("sam-track", backend)
    pairs = []
    for pair in draws.drawn_pairs(cases_dir, names, list(draws.SEVERITIES), seed):
        results, scores, maps = {}, {}, None
        for method in METHODS:
            spec = PROMPT_METHODS[method]  # the evaluation's switches for the method, not a copy of them
            params = pipeline.SegmentParams(method=spec.cpd, propagate=spec.propagate, intensity_preset=pair.preset,
                                            **({} if spec.leak_limit else {"leak_limit": None}))
            with _SamScores(backend, pipeline) as sam:
                try:
                    results[method] = pipeline.segment(pair.volume, pair.curve, backend, prior, params,
                                                       progress=sam.progress, saliency=maps)
                except pipeline.NothingToSegment as exc:
                    results[method] = exc.result
            maps = results["spd"].saliency_maps
            scores[method] = sam.per_slice()
        volume, label, result = pair.volume, pair.ref, results["spd"]
        masks = {m: volume.with_array(r.mask).slices() > 0 for m, r in results.items()}
        with_points = sorted(t for t, p in result.prompts.items() if p)
        consensus = {t: d.consensus for t, d in result.decisions.items()}
        spacing = min(volume.in_plane_spacing)
        per = []
        for t in result.processed_slices:
            d = result.decisions[t]
            per.append({"t": t, "label": int(label[t].sum()),
                        **{f"{m}_area": int(masks[m][t].sum()) for m in masks},
                        **{f"{m}_overlap": int((masks[m][t] & label[t]).sum()) for m in masks},
                        **{f"{m}_sam_iou": scores[m].get(t) for m in ("raw", "spd")},
                        "own": len(result.prompts.get(t, [])), "kept": len(d.with_status("kept")),
                        "borrowed": len(d.with_status("borrowed")), "flags": list(d.flags),
                        "prior_area": int((result.saliency_maps[t] > result.tau).sum())})
        pairs.append({"case": pair.case, "severity": pair.severity, "seed": seed,
                      "dsc": {m: dice(masks[m], label) for m in masks},
                      "radius_mm": run_radius_px(result.saliency_maps, consensus, result.tau, spacing) * spacing,
                      "first": with_points[0], "last": with_points[-1], "label_total": int(label.sum()),
                      "spd_total": (int(masks["spd"].sum()), int((masks["spd"] & label).sum())), "slices": per})
        print(f"seed {seed} {pair.case} {pair.severity}", flush=True)
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


def _thin(pair: dict) -> bool:
    return pair["radius_mm"] < THIN_MM


def _thin_where_wider(method: str, k: float) -> Rule:
    """On a thin structure, a slice with borrowed points takes ``method``'s mask where spd's is over k x
    that: the borrowed points widened the box. ``local`` (the slice's kept points alone) needs kept
    points there, ``raw`` (all its own points) points of its own."""
    needs = {"local": "kept", "raw": "own"}[method]

    def rule(s: dict, pair: dict):
        if _thin(pair) and s[needs] and s["borrowed"] and s["spd_area"] > k * s[f"{method}_area"]:
            return s[f"{method}_area"], s[f"{method}_overlap"]
        return None
    return rule


def _sam_prefers_raw_on_slice(margin: float) -> Rule:
    """A slice with points of its own takes raw's mask where SAM's mean predicted IoU of raw's
    decodes there beats spd's by more than ``margin``."""
    def rule(s: dict, pair: dict):
        raw, spd = s["raw_sam_iou"], s["spd_sam_iou"]
        if s["own"] and raw is not None and spd is not None and raw > spd + margin:
            return s["raw_area"], s["raw_overlap"]
        return None
    return rule


def _run_sam_iou(pair: dict, method: str) -> float:
    values = [s[f"{method}_sam_iou"] for s in pair["slices"] if s[f"{method}_sam_iou"] is not None]
    return float(np.mean(values)) if values else 0.0


def _sam_prefers_raw_run(margin: float) -> Rule:
    """The whole run is raw's where SAM's predicted IoU, averaged over the run's slices, is higher
    for raw's than for spd's by more than ``margin`` (both runs cover the same slices)."""
    def rule(s: dict, pair: dict):
        if _run_sam_iou(pair, "raw") > _run_sam_iou(pair, "spd") + margin:
            return s["raw_area"], s["raw_overlap"]
        return None
    return rule


RULES: dict[str, Rule] = {
    "spd (as run)": lambda s, pair: None,
    "nothing past the curve's ends": lambda s, pair: (0, 0) if _past_the_curve(s, pair) else None,
    **{f"past the ends, not over {k}x the end slice": _end_larger_than(k) for k in (0.8, 1.0, 1.5, 2.0)},
    "raw's mask where points were borrowed": lambda s, pair: (
        (s["raw_area"], s["raw_overlap"]) if s["borrowed"] and s["own"] else None),
    "thin: nothing past the curve's ends": lambda s, pair: (0, 0) if _thin(pair) and _past_the_curve(s, pair) else None,
    **{f"thin: local's mask where spd's is over {k}x": _thin_where_wider("local", k) for k in (1.0, 1.5, 2.0)},
    **{f"thin: raw's mask where spd's is over {k}x": _thin_where_wider("raw", k) for k in (1.5, 2.0, 3.0)},
    **{f"SAM's IoU, per slice: raw's where over spd's + {m}": _sam_prefers_raw_on_slice(m) for m in (0.0, 0.05, 0.1)},
    **{f"SAM's IoU, per run: raw's where over spd's + {m}": _sam_prefers_raw_run(m) for m in (0.0, 0.02, 0.05)},
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
