"""studies/_draws.py, what the dev studies share: the scored draw is refused, the cases are split over
worker processes once each, and a drawn pair is the evaluation's own (the same prompts and label) on a
real case."""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from _helpers import load_study

from SPDSegmentLib.evaluation.cases import build_sample_cases, find_cases
from SPDSegmentLib.evaluation.harness import EvalConfig, evaluate_case
from SPDSegmentLib.method.pipeline import SegmentParams
from SPDSegmentLib.method.prompts import slice_prompts

CASES = ("abdomen_mr_aorta", "abdomen_mr_spleen", "abdomen_mr_kidney_left")


@pytest.fixture(scope="module")
def draws():
    yield from load_study("_draws")


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory) -> Path:
    built = tmp_path_factory.mktemp("built")
    build_sample_cases(built, log=lambda *_: None)
    chosen = tmp_path_factory.mktemp("cases")
    for name in CASES:
        shutil.copytree(built / name, chosen / name)
    return chosen


def _share(args: tuple) -> list[tuple[str, int, str]]:
    """A worker that reports which cases it was given, in which process, with the shared argument."""
    _, names, tag = args
    return [(name, os.getpid(), tag) for name in names]


def test_the_scored_draw_is_refused_and_the_common_arguments(draws):
    with pytest.raises(SystemExit, match="scored draw"):
        draws.refuse_scored(draws.SCORED_SEED)
    assert draws.refuse_scored(1) is None
    parser = argparse.ArgumentParser()
    draws.add_draw_arguments(parser)
    args = parser.parse_args(["--cases", "somewhere"])
    assert (args.seed, args.severities, args.jobs, args.out) == (1, ["mild", "clinical", "severe"], 1, "studies_out")
    assert args.cache_dir == draws.DEFAULT_CACHE
    with pytest.raises(SystemExit):  # a severity the noise model does not have
        parser.parse_args(["--cases", "somewhere", "--severities", "extreme"])


def test_the_cases_are_split_over_the_processes_once_each(draws, cases_dir):
    rows = draws.over_cases(_share, str(cases_dir), 2, "shared")
    assert sorted(name for name, _, _ in rows) == sorted(CASES)
    assert {tag for _, _, tag in rows} == {"shared"}
    assert os.getpid() not in {pid for _, pid, _ in rows}, "the shares run in worker processes"
    assert sorted(name for name, _, _ in draws.over_cases(_share, str(cases_dir), 1, "x")) == sorted(CASES)


def test_a_drawn_pair_is_the_evaluations_own(draws, cases_dir, backend):
    """The real MR aorta, seed 1: the pair's curve gives the prompts ``evaluate_case`` runs raw on,
    its label slices are the evaluation's, and another severity is another curve."""
    pairs = list(draws.drawn_pairs(str(cases_dir), ["abdomen_mr_aorta"], ["mild", "severe"], 1))
    assert [(p.case, p.severity) for p in pairs] == [("abdomen_mr_aorta", "mild"), ("abdomen_mr_aorta", "severe")]
    case = next(c for c in find_cases(cases_dir) if c.name == "abdomen_mr_aorta")
    _, art = evaluate_case(case, backend, EvalConfig(methods=("raw",), seed=1), "mild")
    mild = pairs[0]
    distance = SegmentParams().group_distance_mm
    assert slice_prompts(mild.curve, mild.volume, distance) == art["results"]["raw"].prompts
    assert np.array_equal(mild.ref, mild.volume.with_array(art["label"]).slices() > 0) and mild.ref.any()
    assert mild.preset == case.info.get("preset", "auto")
    assert slice_prompts(pairs[1].curve, pairs[1].volume, distance) != art["results"]["raw"].prompts


def test_a_case_with_its_own_centerline_is_refused(draws, tmp_path, cases_dir):
    shutil.copytree(cases_dir / "abdomen_mr_aorta", tmp_path / "held_out")
    (tmp_path / "held_out" / "centerline.mrk.json").write_text("{}")
    with pytest.raises(SystemExit, match="its own centerline"):
        next(draws.drawn_pairs(str(tmp_path), ["held_out"], ["mild"], 1))
