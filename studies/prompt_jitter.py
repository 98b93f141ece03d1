"""How much do sub-voxel moves of the clicks move SPD, and do votes over such moves steady it?

    .venv/bin/python studies/prompt_jitter.py --cases ~/.cache/spdsegment/cases --seed 1 [--jobs 2]
        [--severities clinical] [--copies 3] [--sd-mm 0.5] [--out studies_out] [--flips]

Why: a user who clicks the same centerline again places every point a fraction of a voxel
elsewhere. A method whose result flips with that makes its per-case figures a lottery
(docs/method.md, "How much of the per-case target is a lottery"), and a rule that "fixes" one
scored loss may be noise. For each pair (case, severity) of one unscored noise draw this script
runs, with the same backend and embeddings:

* ``raw`` and ``spd`` on the curve as drawn and on ``copies - 1`` moved copies (every point moved in
  the slice plane by a seeded normal ``sd_mm``): the spread of each method's DSC over the copies,
  and on how many copies SPD loses to raw (SPD < raw - 0.01);
* ``prior-majority``: SPD whose sam-track prior is run on the prompts as drawn and on the moved
  copies' prompts, a pixel salient where most runs put it (``prior-union``: where any run puts it);
* ``pipeline-majority``: the pixel-wise majority of SPD's masks over the copies;
* which side of SPD moves: ``prior-moved`` decodes the drawn curve's prompts with the prior's maps
  of each moved copy, ``prompts-moved`` each moved copy's prompts with the drawn curve's maps.

With ``--flips`` it runs only the continuity tracker, on the drawn prompts and on moved copies of
them, and counts the decisions that flip: objects are matched across runs by their 3-D Dice (over
``MATCH_DICE``), and an object kept in one run whose match is rejected, or that has none, flips.

It prints one JSON line per pair and a summary per variant: mean DSC and the pairs where the
variant loses to raw as drawn, the figures the adoption rule of docs/method.md reads. Seed 0 is the
evaluation's scored draw (README, docs/evaluation) and is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

STUDIES = str(Path(__file__).resolve().parent)
if STUDIES not in sys.path:  # the shared _draws, also when this study is loaded by file path (its tests)
    sys.path.insert(0, STUDIES)
import _draws as draws

VARIANTS = ("spd", "prior-majority", "prior-union", "pipeline-majority")
MATCH_DICE = 0.5  # 3-D Dice over which two runs' objects are the same object


def moved_prompts(prompts: dict, spacing_rc: tuple[float, float], shape: tuple[int, int], sd_mm: float,
                  seed: int) -> dict:
    """Slice prompts with every point moved in its slice by a seeded normal ``sd_mm`` (kept on the
    slice; slice and group unchanged)."""
    from SPDSegmentLib.method.prompts import PromptPoint

    rng = np.random.default_rng(seed)
    sd = sd_mm / np.asarray(spacing_rc, dtype=float)
    out = {}
    for t, points in sorted(prompts.items()):
        moves = rng.normal(0.0, 1.0, (len(points), 2)) * sd
        out[t] = [PromptPoint(p.slice, float(np.clip(p.row + dr, 0, shape[0] - 1)),
                              float(np.clip(p.col + dc, 0, shape[1] - 1)), p.group)
                  for p, (dr, dc) in zip(points, moves)]
    return out


def moved_centerline(centerline, volume, sd_mm: float, seed: int):
    """The centerline with every point moved by a seeded normal ``sd_mm`` along the volume's two
    in-plane axes (so no point changes slice), whatever the volume's orientation."""
    origin, row, col = volume.src_to_ras(np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    axes = np.stack([(row - origin) / np.linalg.norm(row - origin), (col - origin) / np.linalg.norm(col - origin)])
    rng = np.random.default_rng(seed)
    moves = rng.normal(0.0, sd_mm, (len(centerline.points_ras), 2)) @ axes
    return dataclasses.replace(centerline, points_ras=centerline.points_ras + moves)


@dataclasses.dataclass
class VotingPrior:
    """A prior run on the prompts as given and on ``copies - 1`` moved copies of them; a pixel is
    salient (1) where at least ``min_votes`` runs find it salient, 0 elsewhere."""

    base: object
    copies: int = 3
    min_votes: int | None = None  # None: a majority
    sd_mm: float = 0.5

    def __post_init__(self) -> None:
        self.name = f"{self.base.name}, votes over {self.copies} moved copies"
        self.default_tau = self.base.default_tau
        self.embeds = self.base.embeds
        self.training_free = self.base.training_free

    @property
    def needed_votes(self) -> int:
        return self.copies // 2 + 1 if self.min_votes is None else self.min_votes

    def compute(self, inputs, slice_indices: list[int]) -> dict[int, np.ndarray]:
        votes: dict[int, np.ndarray] = {}
        for k in range(self.copies):
            run_inputs = inputs if k == 0 else dataclasses.replace(
                inputs, on_slice=None, prompts=moved_prompts(inputs.prompts, inputs.volume.in_plane_spacing,
                                                             inputs.volume.slice_shape, self.sd_mm, seed=k))
            for t, m in self.base.compute(run_inputs, slice_indices).items():
                votes[t] = votes.get(t, 0) + (m > self.base.default_tau).astype(np.uint8)
        return {t: (v >= self.needed_votes).astype(np.float32) for t, v in votes.items()}


def majority(masks: list[np.ndarray]) -> np.ndarray:
    """Pixel-wise majority of boolean masks."""
    return np.sum(masks, axis=0) >= len(masks) // 2 + 1


def pair_figures(volume, ref: np.ndarray, preset: str, drawn, backend, priors: dict, copies: int,
                 sd_mm: float) -> dict:
    """Every variant's DSC for one pair: ``drawn`` is the noisy curve, ``ref`` the label's slices."""
    from SPDSegmentLib.evaluation.harness import _run
    from SPDSegmentLib.evaluation.metrics import dice
    from SPDSegmentLib.method.pipeline import SegmentParams

    curves = [drawn] + [moved_centerline(drawn, volume, sd_mm, seed=1000 + k) for k in range(1, copies)]

    def run(curve, method: str, prior, saliency=None):
        return _run(volume, curve, backend, prior, SegmentParams(method=method, intensity_preset=preset), saliency)

    def mask(result) -> np.ndarray:
        return volume.with_array(result.mask).slices() > 0

    def with_maps(curve, maps) -> float | None:  # None: the copy processes other slices
        try:
            return round(dice(mask(run(curve, "spd", priors["spd"], maps)), ref), 4)
        except ValueError:
            return None

    results = {m: [run(c, m, priors["spd"]) for c in curves] for m in ("raw", "spd")}
    dsc = {f"{m}-copies": [round(dice(mask(r), ref), 4) for r in results[m]] for m in results}
    dsc["raw"], dsc["spd"] = dsc["raw-copies"][0], dsc["spd-copies"][0]
    # which side moves SPD: the prior's maps of a moved copy with the drawn curve's prompts, and the
    # drawn curve's maps with a moved copy's prompts (the curve as drawn first in both lists)
    drawn_maps = results["spd"][0].saliency_maps
    dsc["prior-moved-copies"] = [dsc["spd"]] + [with_maps(drawn, r.saliency_maps) for r in results["spd"][1:]]
    dsc["prompts-moved-copies"] = [dsc["spd"]] + [with_maps(c, drawn_maps) for c in curves[1:]]
    for name in ("prior-majority", "prior-union"):
        dsc[name] = round(dice(mask(run(drawn, "spd", priors[name])), ref), 4)
    dsc["pipeline-majority"] = round(dice(majority([mask(r) for r in results["spd"]]), ref), 4)
    return dsc


def object_dice(a, b) -> float:
    """3-D Dice of two tracked objects' masks (slices missing from one count as empty there)."""
    inter = sum(int((m & b.masks[t]).sum()) for t, m in a.masks.items() if t in b.masks)
    total = sum(int(m.sum()) for m in a.masks.values()) + sum(int(m.sum()) for m in b.masks.values())
    return 2.0 * inter / total if total else 0.0


def _reason_kind(reason: str | None) -> str:
    """A selection reason with its counts as N and its parentheses dropped, so reasons group by kind."""
    if not reason:
        return "?"
    return re.sub(r"\s+", " ", re.sub(r"\s*\([^)]*\)", "", re.sub(r"\d+(\.\d+)?", "N", reason))).strip()


def decision_flips(drawn, moved, ref: np.ndarray) -> list[dict]:
    """The objects of the drawn run (a ``TrackingResult``) whose keep / reject decision differs on the
    moved run: its best match there (Dice over ``MATCH_DICE``) decided otherwise, or it has none
    (then it flips only when it was kept). ``ref``: the label's slices, for each object's share on it."""
    out = []
    for o in drawn.objects:
        score, best = max(((object_dice(o, q), q) for q in moved.objects), key=lambda x: x[0], default=(0.0, None))
        matched = score > MATCH_DICE
        kept, kept_moved = o.oid in drawn.kept, matched and best.oid in moved.kept
        if kept == kept_moved:
            continue
        on_label = float(np.mean([(m & ref[t]).sum() / max(m.sum(), 1) for t, m in o.masks.items()]))
        out.append({"drawn": _reason_kind(drawn.reasons.get(o.oid)),
                    "moved": _reason_kind(moved.reasons.get(best.oid)) if matched else "no matching object",
                    "area": int(np.median([m.sum() for m in o.masks.values()])), "on_label": round(on_label, 2)})
    return out


def pair_flips(volume, ref: np.ndarray, preset: str, drawn, backend, copies: int, sd_mm: float) -> dict:
    """The tracker on the drawn curve's prompts and on ``copies - 1`` moved copies of them: per copy,
    the 3-D Dice of its kept region with the drawn one's, and the decisions that flipped."""
    from SPDSegmentLib.evaluation.metrics import dice
    from SPDSegmentLib.method.continuity import Tracker
    from SPDSegmentLib.method.pipeline import SegmentParams
    from SPDSegmentLib.method.prompts import prompt_extent, slice_prompts
    from SPDSegmentLib.method.windowing import volume_window

    params = SegmentParams(intensity_preset=preset)
    prompts = slice_prompts(drawn, volume, params.group_distance_mm)
    slices = list(prompt_extent(prompts, params.context, volume.num_slices))
    window, src = volume_window(volume, preset), volume.slices()
    slices_u8 = {t: window.apply(src[t]) for t in slices}
    runs = [Tracker(backend, slices_u8, prompts if k == 0 else moved_prompts(
        prompts, volume.in_plane_spacing, volume.slice_shape, sd_mm, seed=k), volume.in_plane_spacing).run(slices)
        for k in range(copies)]

    def region(run) -> np.ndarray:
        maps = run.maps(slices, volume.slice_shape)
        return np.stack([maps[t] > 0 for t in slices])

    drawn_region = region(runs[0])
    dices = [round(dice(region(run), drawn_region), 4) for run in runs[1:]]
    return {"region-dice": dices, "flips": [f for run in runs[1:] for f in decision_flips(runs[0], run, ref)]}


def _pairs(args: tuple[str, list[str], int, list[str], int, float, str, bool]) -> list[dict]:
    """Every variant's DSC (or, with ``flips``, the tracker's flips) for some cases (one worker's share)."""
    from SPDSegmentLib.method.saliency import TrackPrior

    cases_dir, names, seed, severities, copies, sd_mm, cache_dir, flips = args
    backend = draws.study_backend(cache_dir)
    priors = {"spd": TrackPrior(), "prior-majority": VotingPrior(TrackPrior(), copies, None, sd_mm),
              "prior-union": VotingPrior(TrackPrior(), copies, 1, sd_mm)}
    out = []
    for pair in draws.drawn_pairs(cases_dir, names, severities, seed):
        figures = (pair_flips(pair.volume, pair.ref, pair.preset, pair.curve, backend, copies, sd_mm) if flips else
                   pair_figures(pair.volume, pair.ref, pair.preset, pair.curve, backend, priors, copies, sd_mm))
        row = {"case": pair.case, "severity": pair.severity, "seed": seed, **figures}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def record(cases_dir: str, seed: int, severities: list[str], copies: int, sd_mm: float, jobs: int,
           cache_dir: str, flips: bool = False) -> list[dict]:
    """Every case at the given severities of one unscored draw, split over ``jobs`` processes."""
    draws.refuse_scored(seed)
    if copies < 2:
        raise SystemExit("copies must be at least 2 (the curve as drawn and one moved copy)")
    return draws.over_cases(_pairs, cases_dir, jobs, seed, severities, copies, sd_mm, cache_dir, flips)


def summary(rows: list[dict]) -> list[str]:
    """Per variant: mean DSC and losses to raw as drawn; then the spread over the moved copies."""
    lines = [f"{len(rows)} pairs; raw as drawn {np.mean([r['raw'] for r in rows]):.4f}"]
    for name in VARIANTS:
        losses = [f"{r['case']}/{r['severity']}" for r in rows if r[name] < r["raw"] - draws.LOSS_MARGIN]
        lines.append(f"{name:18s} mean {np.mean([r[name] for r in rows]):.4f}  losses {len(losses)}: "
                     f"{', '.join(losses) or '-'}")
    for m in ("raw", "spd", "prior-moved", "prompts-moved"):
        runs = [[x for x in r[f"{m}-copies"] if x is not None] for r in rows]
        spread = [max(x) - min(x) for x in runs]
        lines.append(f"{m} DSC spread over the copies: median {100 * np.median(spread):.1f} points, "
                     f"over 5 points on {sum(s > 0.05 for s in spread)} pairs, max {100 * max(spread):.1f}")
    some = [f"{r['case']}/{r['severity']}" for r in rows
            if any(s < w - draws.LOSS_MARGIN for s, w in zip(r["spd-copies"], r["raw-copies"]))]
    lines.append(f"pairs where spd loses to raw on some copy: {len(some)}")
    return lines


def flips_summary(rows: list[dict]) -> list[str]:
    """How often the tracker's kept region and decisions change over the moved copies, by kind."""
    dices = [d for r in rows for d in r["region-dice"]]
    kinds = Counter((f["drawn"], f["moved"]) for r in rows for f in r["flips"])
    target = sum(any(f["drawn"].startswith("target") or f["moved"].startswith("target") for f in r["flips"])
                 for r in rows)
    lines = [(f"{len(rows)} pairs, {len(dices)} moved copies: kept region unchanged on "
              f"{sum(d >= 0.9995 for d in dices)}, its 3-D Dice with the drawn one's median {np.median(dices):.3f}, "
              f"below 0.9 on {sum(d < 0.9 for d in dices)}"),
             (f"pairs with a flip: {sum(bool(r['flips']) for r in rows)}; flips: {sum(kinds.values())}; "
              f"pairs where the target changes: {target}")]
    lines += [f"{n:4d}  drawn: {drawn}  ->  moved: {moved}" for (drawn, moved), n in kinds.most_common()]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    draws.add_draw_arguments(parser)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--sd-mm", type=float, default=0.5)
    parser.add_argument("--flips", action="store_true", help="count the tracker's flipped decisions only")
    args = parser.parse_args(argv)
    rows = record(args.cases, args.seed, args.severities, args.copies, args.sd_mm, args.jobs, args.cache_dir,
                  args.flips)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = f"prompt_jitter{'_flips' if args.flips else ''}_seed{args.seed}.jsonl"
    Path(args.out, name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("\n".join(flips_summary(rows) if args.flips else summary(rows)))


if __name__ == "__main__":
    sys.exit(main())
