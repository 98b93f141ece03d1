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


def _pair(label: np.ndarray, raw: np.ndarray, spd: np.ndarray, first: int, last: int, local: np.ndarray | None = None,
          radius_mm: float = 5.0, sam_iou: dict[str, list] | None = None) -> dict:
    """The record of one pair, built as the study builds it, from 3-D masks."""
    masks = {"raw": raw, "spd": spd, "local": raw if local is None else local}
    sam_iou = sam_iou or {"raw": [0.8] * len(label), "spd": [0.9] * len(label)}
    slices = [{"t": t, "label": int(label[t].sum()),
               **{f"{m}_area": int(v[t].sum()) for m, v in masks.items()},
               **{f"{m}_overlap": int((v[t] & label[t]).sum()) for m, v in masks.items()},
               **{f"{m}_sam_iou": sam_iou[m][t] for m in ("raw", "spd")},
               "own": int(first <= t <= last), "kept": 1, "borrowed": int(t % 2), "flags": [], "prior_area": 0}
              for t in range(len(label))]
    return {"case": "synthetic", "severity": "mild", "seed": 1, "first": first, "last": last, "radius_mm": radius_mm,
            "dsc": {m: dice(v, label) for m, v in masks.items()}, "label_total": int(label.sum()),
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


def test_the_thin_structure_rules_act_on_thin_runs_only(study):
    rng = np.random.default_rng(5)
    label, raw, local = (rng.random((6, 10, 10)) > p for p in (0.6, 0.5, 0.7))
    spd = rng.random((6, 10, 10)) > 0.2  # about 8/3 of local's area on every slice
    rule = study.RULES["thin: local's mask where spd's is over 1.5x"]
    thin = _pair(label, raw, spd, first=1, last=4, local=local, radius_mm=study.THIN_MM - 0.5)
    swapped = spd.copy()
    for t in (1, 3, 5):  # kept and borrowed points (odd slices), spd over 1.5x local
        assert spd[t].sum() > 1.5 * local[t].sum()
        swapped[t] = local[t]
    assert study.dsc_with(thin, rule) == pytest.approx(dice(swapped, label))
    thick = _pair(label, raw, spd, first=1, last=4, local=local, radius_mm=study.THIN_MM)
    assert study.dsc_with(thick, rule) == pytest.approx(dice(spd, label))
    ends = spd.copy()
    ends[[0, 5]] = False
    assert study.dsc_with(thin, study.RULES["thin: nothing past the curve's ends"]) == pytest.approx(dice(ends, label))
    assert study.dsc_with(thick, study.RULES["thin: nothing past the curve's ends"]) == pytest.approx(dice(spd, label))


def test_the_sam_score_rules_take_raw_where_sam_scores_it_higher(study):
    rng = np.random.default_rng(6)
    label, raw, spd = (rng.random((5, 10, 10)) > p for p in (0.6, 0.5, 0.4))
    scores = {"raw": [0.9, 0.7, 0.95, None, 0.6], "spd": [0.8, 0.8, 0.8, 0.9, None]}
    pair = _pair(label, raw, spd, first=0, last=3, sam_iou=scores)
    by_slice = spd.copy()
    for t in (0, 2):  # own points, both scored, raw's higher (slice 4 has no points of its own)
        by_slice[t] = raw[t]
    assert study.dsc_with(pair, study.RULES["SAM's IoU, per slice: raw's where over spd's + 0.0"]) == \
        pytest.approx(dice(by_slice, label))
    only_2 = spd.copy()
    only_2[2] = raw[2]  # 0.95 > 0.8 + 0.1, but 0.9 is not
    assert study.dsc_with(pair, study.RULES["SAM's IoU, per slice: raw's where over spd's + 0.1"]) == \
        pytest.approx(dice(only_2, label))
    # per run: raw's mean 0.7875 against spd's 0.825 -> spd stays; scores the other way -> raw's run
    run_rule = study.RULES["SAM's IoU, per run: raw's where over spd's + 0.0"]
    assert study.dsc_with(pair, run_rule) == pytest.approx(dice(spd, label))
    flipped = _pair(label, raw, spd, first=0, last=3, sam_iou={"raw": scores["spd"], "spd": scores["raw"]})
    assert study.dsc_with(flipped, run_rule) == pytest.approx(dice(raw, label))


def test_sam_scores_are_counted_per_segmented_slice_and_the_backend_is_restored(study, cta_slab, cta_centerline,
                                                                                backend):
    """On the real CTA slab and LiteMedSAM: a score for every slice the run decoded (each slice with a
    mask), and the backend and pipeline as they were afterwards."""
    from SPDSegmentLib.method import pipeline
    from SPDSegmentLib.method.saliency import load_prior
    from SPDSegmentLib.method.windowing import volume_window

    slab, _ = cta_slab
    original_limit = pipeline._limit_leaks
    with study._SamScores(backend, pipeline) as sam:
        assert backend.decode == sam.decode
        result = pipeline.segment(slab, cta_centerline, backend, load_prior("sam-track", backend),
                                  pipeline.SegmentParams(), progress=sam.progress)
    assert "decode" not in vars(backend) and pipeline._limit_leaks is original_limit
    masks = slab.with_array(result.mask).slices()
    with_mask = {t for t in result.processed_slices if masks[t].any()}
    scored = sam.per_slice()
    assert with_mask and with_mask <= set(scored) <= set(result.processed_slices)
    assert all(0.0 < v < 1.5 for v in scored.values())
    # a decode while the pipeline reports anything else (the prior, the encoder) is no slice's score
    emb = backend.embed(volume_window(slab, "auto").apply(slab.slices()[0]))
    with study._SamScores(backend, pipeline) as sam:
        assert pipeline._limit_leaks == sam.limit_leaks
        sam.progress(0.2, "encoding slices (1/3)")
        backend.decode(emb, None, (100.0, 100.0, 160.0, 160.0))
        assert sam.scores == {}
        sam.progress(0.6, "segmenting slice 7 (2/5)")
        backend.decode(emb, None, (100.0, 100.0, 160.0, 160.0))
        assert list(sam.scores) == [7] and len(sam.scores[7]) == 1
