"""What the dev studies share: the unscored noise draws of the built cases, split over processes.

Why: each study judges a candidate by the adoption rule of docs/method.md on draws the evaluation
does not score. The refusal of the scored draw, the way a pair's curve is drawn from its case's label
and the split of the cases over worker processes must be the same in every study, or two studies
would measure different things under one seed. The studies run as scripts (this folder is then on
``sys.path``) and are loaded by file path in their tests; each puts this folder on the path first.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from SPDSegmentLib.evaluation.harness import EvalConfig
from SPDSegmentLib.evaluation.noise import SEVERITIES as NOISE_MODELS
from SPDSegmentLib.sam.embedding_cache import DEFAULT_CACHE_DIR

SCORED_SEED = EvalConfig.seed  # the seed evaluate-sample scores (its default)
SEVERITIES = tuple(NOISE_MODELS)  # the noise model's levels, mildest first
LOSS_MARGIN = 0.01  # the per-case target: SPD >= raw - 0.01
DEFAULT_CACHE = str(DEFAULT_CACHE_DIR)  # the training commands' embedding folder, shared


def refuse_scored(seed: int) -> None:
    """Stop before anything runs on the scored draw: no rule is chosen on a case it is scored on."""
    if seed == SCORED_SEED:
        raise SystemExit(f"seed {SCORED_SEED} is the scored draw: study on other seeds only")


def add_draw_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every single-draw study takes: which cases, which draw, how many processes."""
    parser.add_argument("--cases", required=True, help="built cases (spdsegment build-cases)")
    parser.add_argument("--seed", type=int, default=1, help="the noise draw (0, the scored one, is refused)")
    parser.add_argument("--severities", nargs="+", choices=SEVERITIES, default=list(SEVERITIES))
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (cases are split between them)")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE, help="SAM embedding cache")
    parser.add_argument("--out", default="studies_out", help="where the study's records are written")


def study_backend(cache_dir: str):
    """LiteMedSAM as the evaluation loads it, with its embedding cache (encodings are reused)."""
    from SPDSegmentLib.sam.backend import load_backend
    from SPDSegmentLib.sam.embedding_cache import EmbeddingCache

    return load_backend("litemedsam", None, "auto", cache=EmbeddingCache(folder=cache_dir))


@dataclass
class DrawnPair:
    """One (case, severity) of a draw: the image, its label as slices, and the simulated curve."""

    case: str
    severity: str
    volume: object  # SPDSegmentLib.volume.Volume
    ref: np.ndarray  # the label on the volume's slices, boolean
    preset: str
    curve: object  # SPDSegmentLib.method.prompts.Centerline


def drawn_pairs(cases_dir: str, names: list[str], severities: list[str], seed: int) -> Iterator[DrawnPair]:
    """The named cases' pairs, each curve simulated from the label as the evaluation does. A case
    with its own ``centerline.mrk.json`` (a held-out folder) is refused: the evaluation runs its given
    curve, so a drawn one would be measured on something it never scores."""
    from SPDSegmentLib.evaluation.cases import find_cases
    from SPDSegmentLib.evaluation.noise import simulate
    from SPDSegmentLib.evaluation.skeleton import centerline_from_label
    from SPDSegmentLib.io import read_label, read_volume

    for case in (c for c in find_cases(cases_dir) if c.name in names):
        if case.centerline is not None:
            raise SystemExit(f"case {case.name} has its own centerline.mrk.json: the studies draw curves "
                             "from built cases' labels (spdsegment build-cases)")
        volume = read_volume(case.image, case.name)
        label = read_label(case.label, volume, label_value=case.info.get("label_value"))
        ref = volume.with_array(label).slices() > 0
        for severity in severities:
            curve = simulate(centerline_from_label(volume, label), volume, label, severity, seed=seed).centerline
            yield DrawnPair(case.name, severity, volume, ref, case.info.get("preset", "auto"), curve)


def over_cases(worker: Callable[[tuple], list], cases_dir: str, jobs: int, *shared) -> list:
    """``worker((cases_dir, names, *shared))`` on ``jobs`` interleaved shares of the cases, in as many
    processes; the rows of all shares in one list. ``worker`` must be a module-level function."""
    from SPDSegmentLib.evaluation.cases import find_cases

    names = [c.name for c in find_cases(cases_dir)]
    shares = [(cases_dir, names[i::jobs], *shared) for i in range(jobs)]
    with ProcessPoolExecutor(jobs) as pool:
        return [row for share in pool.map(worker, shares) for row in share]
