"""studies/param_variants.py: overrides are checked against the dataclasses before anything runs, a
pair's figures without overrides are the evaluation's own on a real case, an override reaches the
tracker, the comparison applies the adoption rule, and the scored draw (seed 0) is refused."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from _helpers import load_study

from SPDSegmentLib.evaluation.cases import build_sample_cases, find_cases
from SPDSegmentLib.evaluation.harness import EvalConfig, evaluate_case
from SPDSegmentLib.evaluation.metrics import dice
from SPDSegmentLib.evaluation.noise import simulate
from SPDSegmentLib.evaluation.skeleton import centerline_from_label
from SPDSegmentLib.io import read_label, read_volume
from SPDSegmentLib.method.continuity import TrackingParams
from SPDSegmentLib.method.pipeline import SegmentParams, segment
from SPDSegmentLib.method.saliency import TrackPrior


@pytest.fixture(scope="module")
def study():
    yield from load_study("param_variants")


@pytest.fixture(scope="module")
def mr_aorta_case(tmp_path_factory):
    built = tmp_path_factory.mktemp("built")
    build_sample_cases(built, log=lambda *_: None)
    chosen = tmp_path_factory.mktemp("cases")
    shutil.copytree(built / "abdomen_mr_aorta", chosen / "abdomen_mr_aorta")
    return find_cases(chosen)[0]


def test_overrides_are_read_as_json_and_checked_against_the_dataclass(study):
    read = study.parse_overrides
    assert read(["min_support_fraction=0.15", "rim_depth=null", "area_ratio=[0.4, 2]", "extent=false"],
                TrackingParams) == {"min_support_fraction": 0.15, "rim_depth": None, "area_ratio": (0.4, 2),
                                    "extent": False}
    assert read(["leak_limit=null", "context=3", "intensity_preset=ct-soft"], SegmentParams) == \
        {"leak_limit": None, "context": 3, "intensity_preset": "ct-soft"}
    assert read([], TrackingParams) == {}
    for pairs, kind, message in ((["no_such=1"], TrackingParams, "no field of TrackingParams"),
                                 (["min_score"], TrackingParams, "KEY=VALUE"),
                                 (["min_score=high"], TrackingParams, "is float"),
                                 (["min_score=null"], TrackingParams, "is float"),  # not optional
                                 (["extent=1"], TrackingParams, "is bool"),  # 1 is no bool
                                 (["min_support_points=2.5"], TrackingParams, "is int"),
                                 (["area_ratio=[0.5]"], TrackingParams, "is tuple"),  # two numbers
                                 (["area_ratio=[0.5, \"x\"]"], TrackingParams, "is tuple"),
                                 (["leak_limit=0.5"], SegmentParams, "refuses"),  # validate()
                                 (["method=oracle"], SegmentParams, "refuses")):
        with pytest.raises(SystemExit, match=message):
            read(pairs, kind)


def test_a_pairs_figures_are_the_evaluations_and_an_override_reaches_the_tracker(study, mr_aorta_case, backend):
    """The real MR aorta, mild noise of seed 1 (a draw the evaluation does not score)."""
    rows, _ = evaluate_case(mr_aorta_case, backend, EvalConfig(methods=("raw", "spd"), seed=1), "mild")
    expected = {r["method"]: round(r["dsc"], 4) for r in rows}
    volume = read_volume(mr_aorta_case.image, mr_aorta_case.name)
    label = read_label(mr_aorta_case.label, volume, label_value=mr_aorta_case.info.get("label_value"))
    ref = volume.with_array(label).slices() > 0
    curve = simulate(centerline_from_label(volume, label), volume, label, "mild", seed=1).centerline
    preset = mr_aorta_case.info.get("preset", "auto")
    figures = study.pair_figures(volume, ref, preset, curve, backend, TrackPrior(), {})
    assert figures == expected and 0.0 < figures["raw"] < figures["spd"] <= 1.0, (figures, expected)
    # without the tracker's extent from the image (the ablation's fixed boxes) the prior, and so both
    # figures' boxes, change: the override is what runs
    fixed = study.pair_figures(volume, ref, preset, curve, backend, TrackPrior(params=TrackingParams(extent=False)), {})
    assert fixed["spd"] != figures["spd"], fixed
    # a pipeline override reaches the runs (no borrowing from neighbouring slices)
    varied = study.pair_figures(volume, ref, preset, curve, backend, TrackPrior(), {"context": 0})
    direct = segment(volume, curve, backend, TrackPrior(), SegmentParams(intensity_preset=preset, context=0))
    assert varied["spd"] == round(dice(volume.with_array(direct.mask).slices() > 0, ref), 4) != figures["spd"]

def _row(case: str, raw: float, spd: float, severity: str = "mild", seed: int = 1) -> dict:
    return {"case": case, "severity": severity, "seed": seed, "raw": raw, "spd": spd}


def test_the_comparison_applies_the_adoption_rule(study):
    baseline = [_row("a", 0.50, 0.60), _row("b", 0.50, 0.45), _row("c", 0.50, 0.70)]
    fewer = [_row("a", 0.50, 0.60), _row("b", 0.50, 0.495), _row("c", 0.50, 0.70)]
    lines = study.summary(fewer, baseline)
    assert "losses 0: -" in lines[0] and "b/mild: spd 0.450 -> 0.495" in "\n".join(lines)
    assert lines[-1].endswith("adoption rule on this draw: met") and "1 pairs up, 0 down" in lines[-1]
    lower_mean = [_row("a", 0.50, 0.55), _row("b", 0.50, 0.495), _row("c", 0.50, 0.70)]
    assert study.summary(lower_mean, baseline)[-1].endswith("not met")
    same_losses = [_row("a", 0.50, 0.60), _row("b", 0.50, 0.46), _row("c", 0.50, 0.80)]
    assert study.summary(same_losses, baseline)[-1].endswith("not met"), "a higher mean alone is not enough"
    assert "losses 1: b/mild" in study.summary(baseline)[0] and len(study.summary(baseline)) == 1
    with pytest.raises(SystemExit, match="like with like"):
        study.summary([_row("a", 0.5, 0.6, seed=2)], [_row("a", 0.5, 0.6)])
    assert np.isclose(study.draws.LOSS_MARGIN, 0.01)


def test_the_scored_draw_a_mismatched_baseline_and_an_existing_output_are_refused(study, tmp_path):
    with pytest.raises(SystemExit, match="scored draw"):
        study.record("no-cases-needed", study.draws.SCORED_SEED, ["mild"], {}, {}, 1, "unused")
    other = tmp_path / "seed2.jsonl"
    other.write_text('{"case": "a", "severity": "mild", "seed": 2, "raw": 0.5, "spd": 0.6}\n')
    with pytest.raises(SystemExit, match="another draw"):
        study.main(["--cases", "no-cases-needed", "--seed", "1", "--severities", "mild", "--baseline", str(other)])
    with pytest.raises(SystemExit, match="not a variant"):
        study.main(["--cases", "no-cases-needed", "--segment", "method=raw"])
    with pytest.raises(SystemExit, match="--tag"):
        study.main(["--cases", "no-cases-needed", "--tracking", "min_score=0.6"])
    kept = tmp_path / "param_variants_seed1_default.jsonl"
    kept.write_text("a baseline\n")
    with pytest.raises(SystemExit, match="never overwritten"):
        study.main(["--cases", "no-cases-needed", "--out", str(tmp_path)])
    assert kept.read_text() == "a baseline\n"


def test_a_decoder_variant_leaves_out_the_cases_the_decoder_trained_on(study, mr_aorta_case, backend, tmp_path):
    """``--decoder``: every pair scores a case the decoder never saw; its training cases are read from
    the file (the real frozen decoder's weights, saved as train-decoder saves them) and skipped before
    anything is computed, and such a run needs a tag like any variant."""
    import json

    import torch

    from SPDSegmentLib.training.decoder import DECODER_FORMAT

    path = tmp_path / "decoder.pt"
    meta = {"backend": backend.name, "checkpoint_sha256": backend.checkpoint_sha256, "prompts": "points",
            "train_cases": [mr_aorta_case.name]}
    torch.save({"format": DECODER_FORMAT, "metadata": json.dumps(meta),
                "state_dict": backend.sam.mask_decoder.state_dict()}, path)
    assert study.decoder_training_cases(str(path)) == {mr_aorta_case.name}
    assert study.decoder_training_cases(None) == set()
    cases_dir = str(mr_aorta_case.image.parent.parent)
    assert study._pairs((cases_dir, [mr_aorta_case.name], 1, ["mild"], {}, {}, str(tmp_path / "cache"),
                         str(path))) == []
    with pytest.raises(SystemExit, match="--tag"):
        study.main(["--cases", cases_dir, "--decoder", str(path)])
