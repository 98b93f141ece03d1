"""Does a change of the tracker's or the pipeline's parameters meet the adoption rule on unscored draws?

    .venv/bin/python studies/param_variants.py --cases ~/.cache/spdsegment/cases --seed 1 [--jobs 2]
        [--severities mild clinical severe] [--tracking KEY=VALUE ...] [--segment KEY=VALUE ...]
        [--baseline studies_out/param_variants_seed1_default.jsonl] [--decoder FILE] [--tag NAME] [--out studies_out]

Why: a rule meant to remove SPD's losses to raw is judged on noise draws the evaluation does not
score, by the adoption rule of docs/method.md: fewer pairs where SPD loses to raw (SPD < raw - 0.01)
and no lower mean DSC, on seed 1, then on seed 2. Neither ``TrackingParams`` (the continuity
tracker's gates and selection) nor the pipeline's ``SegmentParams`` has a switch on the command
line, and a variant must not need an edited library to be measured. For every pair (case,
severity) of one draw this script runs ``raw`` and ``spd`` as the evaluation does (same backend,
windowing, prompts, the ``sam-track`` prior), with the given fields of either dataclass replaced:

* ``--tracking min_support_fraction=0.15`` replaces a ``TrackingParams`` field;
* ``--segment propagate_radius_ratio=2`` replaces a ``SegmentParams`` field.
* ``--decoder decoder.pt`` runs both with a mask decoder from ``train-decoder`` (the pipeline then
  gives it each box with its points). The cases it trained on (its ``train_cases``) are left out of
  the draw and out of the baseline, so every pair scores a case the decoder never saw.

Both runs take the overrides, as both would take a changed default in the evaluation; the pipeline
itself ignores for ``raw`` what is SPD's alone (propagation, the leak limit), and ``raw`` sizes its
boxes by the variant's prior maps, as in the evaluation.

Values are read as JSON (``0.15``, ``null``, ``true``, ``[0.5, 1.6]``), else as text; a variant needs
a ``--tag``, and an existing output file is never overwritten. An unknown field
or a value its dataclass refuses stops the run before anything is computed. It prints one JSON line
per pair and the mean DSC and losses of ``raw`` and ``spd``; with ``--baseline`` (a file this script
wrote without overrides, or with other ones, on the same draw) also the pairs that moved and whether
the adoption rule is met on this draw. Seed 0 is the evaluation's scored draw and is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

STUDIES = str(Path(__file__).resolve().parent)
if STUDIES not in sys.path:  # the shared _draws, also when this study is loaded by file path (its tests)
    sys.path.insert(0, STUDIES)
import _draws as draws

MOVED = 0.002  # a pair whose SPD DSC moved less than this is unchanged in the comparison


def _accepts(annotation: str, value) -> bool:
    """Whether ``value`` fits a field annotated ``annotation`` (the dataclasses' own annotations are
    strings: ``float | None``, ``bool``, ``tuple[float, float]``); a frozen dataclass checks nothing."""
    if value is None:
        return "None" in annotation
    kinds = {"bool": lambda v: isinstance(v, bool),
             "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
             "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
             "str": lambda v: isinstance(v, str),
             "tuple": lambda v: isinstance(v, tuple)}
    for part in (p.strip() for p in annotation.split("|")):
        name, _, inner = part.partition("[")
        if name not in kinds or not kinds[name](value):
            continue
        items = [i.strip() for i in inner.rstrip("]").split(",")] if inner else []
        if name != "tuple" or (len(items) == len(value) and all(_accepts(i, v) for i, v in zip(items, value))):
            return True
    return False


def parse_overrides(pairs: list[str], kind: type) -> dict:
    """``KEY=VALUE`` strings as a dict of ``kind``'s fields; refused when a key is no field of it, the
    value does not fit the field's annotation, or ``kind.validate()`` (where it has one) refuses it."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(kind)}
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SystemExit(f"{pair!r}: write overrides as KEY=VALUE")
        if key not in fields:
            raise SystemExit(f"{key!r} is no field of {kind.__name__}; its fields: {', '.join(sorted(fields))}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        value = tuple(value) if isinstance(value, list) else value
        if not _accepts(fields[key], value):
            raise SystemExit(f"{kind.__name__}.{key} is {fields[key]}, not {value!r}")
        out[key] = value
    made = kind(**out)
    if hasattr(made, "validate"):
        try:
            made.validate()
        except ValueError as exc:
            raise SystemExit(f"{kind.__name__} refuses {out}: {exc}") from None
    return out


def pair_figures(volume, ref: np.ndarray, preset: str, curve, backend, prior, segment_over: dict) -> dict:
    """``raw`` and ``spd`` DSC for one pair, as the evaluation runs them (``ref``: the label's slices)."""
    from SPDSegmentLib.evaluation.harness import _run
    from SPDSegmentLib.evaluation.metrics import dice
    from SPDSegmentLib.method.pipeline import SegmentParams

    spd = _run(volume, curve, backend, prior,
               SegmentParams(**{"intensity_preset": preset, **segment_over, "method": "spd"}), None)
    # raw takes spd's prior maps (its boxes are sized by them), as in the evaluation
    raw = _run(volume, curve, backend, prior,
               SegmentParams(**{"intensity_preset": preset, **segment_over, "method": "raw"}), spd.saliency_maps)
    return {m: round(dice(volume.with_array(r.mask).slices() > 0, ref), 4) for m, r in (("raw", raw), ("spd", spd))}


def decoder_training_cases(path: str | None) -> set[str]:
    """The cases a ``train-decoder`` file trained on (none without a decoder)."""
    if path is None:
        return set()
    from SPDSegmentLib.sam.backend import CheckpointError
    from SPDSegmentLib.sam.model_files import read_model_file
    from SPDSegmentLib.training.decoder import DECODER_FORMAT

    meta, _ = read_model_file(path, DECODER_FORMAT, "decoder", CheckpointError)
    return set(meta["train_cases"])


def _pairs(args: tuple[str, list[str], int, list[str], dict, dict, str, str | None]) -> list[dict]:
    """The figures of some cases (one worker's share)."""
    from SPDSegmentLib.method.continuity import TrackingParams
    from SPDSegmentLib.method.saliency import TrackPrior

    cases_dir, names, seed, severities, tracking_over, segment_over, cache_dir, decoder = args
    backend = draws.study_backend(cache_dir)
    if decoder is not None:
        from SPDSegmentLib.training.decoder import load_decoder

        load_decoder(backend, decoder)
        trained = decoder_training_cases(decoder)  # read the file once, not once per case
        names = [n for n in names if n not in trained]
    prior = TrackPrior(params=TrackingParams(**tracking_over))
    out = []
    for pair in draws.drawn_pairs(cases_dir, names, severities, seed):
        figures = pair_figures(pair.volume, pair.ref, pair.preset, pair.curve, backend, prior, segment_over)
        row = {"case": pair.case, "severity": pair.severity, "seed": seed, **figures}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def record(cases_dir: str, seed: int, severities: list[str], tracking_over: dict, segment_over: dict,
           jobs: int, cache_dir: str, decoder: str | None = None) -> list[dict]:
    """Every case at the given severities of one unscored draw, split over ``jobs`` processes (with a
    decoder, every case it did not train on)."""
    draws.refuse_scored(seed)
    return draws.over_cases(_pairs, cases_dir, jobs, seed, severities, tracking_over, segment_over, cache_dir,
                            decoder)


def losses(rows: list[dict]) -> list[str]:
    return [f"{r['case']}/{r['severity']}" for r in rows if r["spd"] < r["raw"] - draws.LOSS_MARGIN]


def summary(rows: list[dict], baseline: list[dict] | None = None) -> list[str]:
    """Mean DSC and losses; against a baseline on the same draw, the moved pairs and the adoption rule."""
    lost = losses(rows)
    means = {m: float(np.mean([r[m] for r in rows])) for m in ("raw", "spd")}
    lines = [(f"{len(rows)} pairs; raw {means['raw']:.4f}; spd {means['spd']:.4f}; "
              f"losses {len(lost)}: {', '.join(lost) or '-'}")]
    if baseline is None:
        return lines
    before = {(r["case"], r["severity"], r["seed"]): r for r in baseline}
    keys = [(r["case"], r["severity"], r["seed"]) for r in rows]
    if set(keys) != set(before):
        raise SystemExit("the baseline holds other pairs (another seed or other severities): compare like with like")
    moved = [(r, before[k]) for r, k in zip(rows, keys) if abs(r["spd"] - before[k]["spd"]) >= MOVED]
    for r, b in sorted(moved, key=lambda x: x[0]["spd"] - x[1]["spd"]):
        lines.append(f"  {r['case']}/{r['severity']}: spd {b['spd']:.3f} -> {r['spd']:.3f} (raw {r['raw']:.3f})")
    mean_before, lost_before = float(np.mean([b["spd"] for b in baseline])), losses(baseline)
    fewer, no_lower = len(lost) < len(lost_before), means["spd"] >= mean_before
    lines.append(f"against the baseline: spd {mean_before:.4f} -> {means['spd']:.4f}, losses {len(lost_before)} -> "
                 f"{len(lost)}; {sum(r['spd'] > b['spd'] for r, b in moved)} pairs up, "
                 f"{sum(r['spd'] < b['spd'] for r, b in moved)} down; adoption rule on this draw: "
                 f"{'met' if fewer and no_lower else 'not met'}")
    return lines


def main(argv: list[str] | None = None) -> None:
    from SPDSegmentLib.method.continuity import TrackingParams
    from SPDSegmentLib.method.pipeline import SegmentParams

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    draws.add_draw_arguments(parser)
    parser.add_argument("--tracking", nargs="*", default=[], metavar="KEY=VALUE", help="TrackingParams fields")
    parser.add_argument("--segment", nargs="*", default=[], metavar="KEY=VALUE", help="SegmentParams fields")
    parser.add_argument("--baseline", help="a jsonl this script wrote on the same draw, to compare with")
    parser.add_argument("--decoder", help="a mask decoder from train-decoder; the cases it trained on are left out")
    parser.add_argument("--tag", default="default", help="name of this variant in the output file")
    args = parser.parse_args(argv)
    tracking_over = parse_overrides(args.tracking, TrackingParams)
    segment_over = parse_overrides(args.segment, SegmentParams)
    if "method" in segment_over:
        raise SystemExit("the method is not a variant: the study runs raw and spd")
    if (tracking_over or segment_over or args.decoder) and args.tag == "default":
        raise SystemExit("name the variant with --tag (the tag 'default' is for the run without overrides)")
    target = Path(args.out, f"param_variants_seed{args.seed}_{args.tag}.jsonl")
    if target.exists():
        raise SystemExit(f"{target} exists: choose another --tag or --out, or remove it (a baseline is never "
                         "overwritten)")
    baseline = None
    if args.baseline:
        baseline = [json.loads(line) for line in Path(args.baseline).read_text().splitlines() if line.strip()]
        if {r["seed"] for r in baseline} != {args.seed} or {r["severity"] for r in baseline} != set(args.severities):
            raise SystemExit(f"{args.baseline} holds another draw or other severities: compare like with like")
        trained = decoder_training_cases(args.decoder)
        baseline = [r for r in baseline if r["case"] not in trained]
    rows = record(args.cases, args.seed, args.severities, tracking_over, segment_over, args.jobs, args.cache_dir,
                  args.decoder)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("\n".join(summary(rows, baseline)))


if __name__ == "__main__":
    sys.exit(main())
