"""studies/slice_rules.py: rules that swap whole slices are scored exactly from per-slice areas, and
the scored draw (seed 0) is refused."""
from __future__ import annotations

import numpy as np
import pytest
from _helpers import load_study

from SPDSegmentLib.evaluation.metrics import dice


@pytest.fixture(scope="module")
def study():
    yield from load_study("slice_rules")


def _pair(label: np.ndarray, raw: np.ndarray, spd: np.ndarray, first: int, last: int) -> dict:
    """The record of one pair, built as the study builds it, from 3-D masks."""
    slices = [{"t": t, "label": int(label[t].sum()), "raw_area": int(raw[t].sum()), "spd_area": int(spd[t].sum()),
               "raw_overlap": int((raw[t] & label[t]).sum()), "spd_overlap": int((spd[t] & label[t]).sum()),
               "own": int(first <= t <= last), "kept": 1, "borrowed": int(t % 2), "flags": [], "prior_area": 0}
              for t in range(len(label))]
    return {"case": "synthetic", "severity": "mild", "seed": 1, "first": first, "last": last,
            "dsc": {"raw": dice(raw, label), "spd": dice(spd, label)}, "label_total": int(label.sum()),
            "spd_total": (int(spd.sum()), int((spd & label).sum())), "slices": slices}


def test_a_slice_rule_scores_what_the_swapped_masks_would(study):
    rng = np.random.default_rng(3)
    label, raw, spd = (rng.random((8, 12, 12)) > p for p in (0.6, 0.5, 0.4))
    pair = _pair(label, raw, spd, first=2, last=5)
    assert study.dsc_with(pair, lambda s, p: None) == pytest.approx(dice(spd, label))
    # empty the slices past the curve's ends; take raw's mask where points were borrowed
    ends = spd.copy()
    ends[[0, 1, 6, 7]] = False
    assert study.dsc_with(pair, study.RULES["nothing past the curve's ends"]) == pytest.approx(dice(ends, label))
    swapped = spd.copy()
    for t in (3, 5):  # borrowed (odd) and with points of their own (2..5)
        swapped[t] = raw[t]
    rule = study.RULES["raw's mask where points were borrowed"]
    assert study.dsc_with(pair, rule) == pytest.approx(dice(swapped, label))
    name, mean, losses = study.score([pair], {"swap": rule})[0]
    assert name == "swap"
    assert mean == pytest.approx(dice(swapped, label))
    assert bool(losses) == (dice(swapped, label) < dice(raw, label) - 0.01)


def test_records_that_do_not_add_up_are_refused(study):
    rng = np.random.default_rng(4)
    pair = _pair(*(rng.random((4, 6, 6)) > 0.5 for _ in range(3)), first=1, last=2)
    pair["spd_total"] = (pair["spd_total"][0], pair["spd_total"][1] + 5)  # no longer the recorded DSC
    with pytest.raises(RuntimeError, match="do not add up"):
        study.score([pair])


def test_the_scored_draw_is_refused(study):
    with pytest.raises(SystemExit, match="scored draw"):
        study.record("no-cases-needed", study.draws.SCORED_SEED, 1, "unused")
