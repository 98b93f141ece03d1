"""The evaluation contract: case layout, results.csv schema, report, on a real (small) MRI case."""
import csv
import json
import shutil

import pytest

from SPDSegmentLib.evaluation.cases import build_sample_cases, find_cases
from SPDSegmentLib.evaluation.harness import COLUMNS, EvalConfig, prior_role, run_evaluation
from SPDSegmentLib.io import InputError


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    built = tmp_path_factory.mktemp("built")
    names = build_sample_cases(built, log=lambda *_: None)
    assert "cta_aorta" in names and any(n.startswith("abdomen_mr_") for n in names)
    assert any("colon" in n for n in names), "bowel labels must be among the cases"
    chosen = tmp_path_factory.mktemp("cases")
    shutil.copytree(built / "abdomen_mr_aorta", chosen / "abdomen_mr_aorta")
    return chosen


def test_results_csv_schema_and_report_on_a_real_mri_case(case_dir, backend, tmp_path):
    config = EvalConfig(methods=("raw", "spd", "spd-prior2", "label-box"), severities=("mild", "severe"), seed=0,
                        second_prior="trained-aorta")
    stale = tmp_path / "panels" / "panel_a_case_no_longer_run_mild.png"
    stale.parent.mkdir()
    stale.write_bytes(b"a previous run's panel")
    rows = run_evaluation(case_dir, tmp_path, backend, config, log=lambda *_: None)
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0].keys()) == COLUMNS
    assert not stale.exists(), "a previous run's panels go, as its report does"
    assert len(table) == 1 * 4 * 2  # case x method x severity
    assert [r["method"] for r in table[:4]] == ["raw", "spd", "spd-trained", "label-box"]
    for r in table:
        assert 0.0 <= float(r["dsc"]) <= 1.0 and float(r["seconds"]) >= 0
    upper = [r for r in rows if r["method"] == "label-box"]
    assert all(r["dsc"] > 0.5 for r in upper), "a box from the label is the upper bound and must work"
    report = (tmp_path / "report.md").read_text()
    for heading in ("Headline: raw prompts vs SPD", "Noise model", "Cases and sources", "Per case"):
        assert heading in report
    assert (tmp_path / "dsc_by_method.png").exists() and (tmp_path / "dsc_vs_severity.png").exists()
    # the shipped aorta prior was trained on this case: the report must say so and keep it out of the means
    assert "| abdomen_mr_aorta | train | mild |" in report
    assert "mean of 0 held-out" in report
    assert "![panels/panel_abdomen_mr_aorta_mild.png]" in report  # the report shows one severity's panels
    assert (tmp_path / "panels" / "panel_abdomen_mr_aorta_mild.png").exists()
    assert not (tmp_path / "panels" / "panel_abdomen_mr_aorta_severe.png").exists(), \
        "other severities' panels are drawn only with all_panels (they kept the committed report over 2 MB)"
    run = json.loads((tmp_path / "config.json").read_text())  # what produced the numbers
    assert (run["backend"], run["device"], run["runtime"]) == (backend.identity, backend.device, backend.runtime)
    assert run["methods"] == list(config.methods) and run["seed"] == 0


def test_all_panels_draws_every_severity_and_the_report_shows_one(case_dir, backend, tmp_path):
    config = EvalConfig(methods=("raw", "spd"), severities=("mild", "severe"), seed=0, all_panels=True)
    run_evaluation(case_dir, tmp_path, backend, config, log=lambda *_: None)
    for sev in ("mild", "severe"):
        assert (tmp_path / "panels" / f"panel_abdomen_mr_aorta_{sev}.png").exists()
    report = (tmp_path / "report.md").read_text()
    assert "![panels/panel_abdomen_mr_aorta_mild.png]" in report
    assert "panel_abdomen_mr_aorta_severe.png" not in report


def test_a_trained_prior_runs_only_on_its_structure_and_knows_each_case_role(backend):
    from SPDSegmentLib.evaluation.cases import Case
    from SPDSegmentLib.method.saliency import load_prior

    prior = load_prior("trained-aorta", backend)

    def case(name, structure):
        return Case(name, None, None, None, {"structure": structure})

    assert prior_role(prior, case("abdomen_mr_colon", "colon")) is None
    assert prior_role(prior, case("abdomen_mr_aorta", "aorta")) == "train"
    assert prior_role(prior, case("abdomen_ct_aorta", "aorta")) == "validation"
    assert prior_role(prior, case("cta_aorta", "aorta")) == "held-out"
    assert prior_role(load_prior("intensity"), case("abdomen_mr_colon", "colon")) == "held-out"


def test_unknown_methods_and_foreign_second_priors_fail_before_any_work(case_dir, backend, tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        run_evaluation(case_dir, tmp_path, backend, EvalConfig(methods=("raw", "sam2")), log=lambda *_: None)
    with pytest.raises(ValueError, match="no shipped prior"):
        run_evaluation(case_dir, tmp_path, backend, EvalConfig(second_prior="trained-spleen"), log=lambda *_: None)
    assert not (tmp_path / "results.csv").exists()


def test_case_layout_errors_are_actionable(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "image.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="needs image"):
        find_cases(tmp_path)
    with pytest.raises(InputError, match="not found"):
        find_cases(tmp_path / "nothing")


def test_a_case_with_its_own_curve_and_no_case_json_is_evaluated_on_that_curve(case_dir, backend, tmp_path):
    """The held-out layout: image, label and a given centerline.mrk.json (a curve in LPS, as Slicer
    writes it), no case.json. The given curve is used as it is, not replaced by a simulated one."""
    from SPDSegmentLib.evaluation.skeleton import centerline_from_label
    from SPDSegmentLib.io import markups_document, read_label, read_volume, write_markups

    cases = tmp_path / "given"
    shutil.copytree(case_dir / "abdomen_mr_aorta", cases / "mr_aorta")
    (cases / "mr_aorta" / "case.json").unlink()
    volume = read_volume(cases / "mr_aorta" / "image.nii.gz")
    label = read_label(cases / "mr_aorta" / "label.nii.gz", volume)
    curve = centerline_from_label(volume, label).points_ras[::4] + [3.0, 0.0, 0.0]  # a little off, like a user
    document = markups_document("Curve", "user curve", curve)
    assert document["markups"][0]["coordinateSystem"] == "LPS"
    write_markups(cases / "mr_aorta" / "centerline.mrk.json", document)
    rows = run_evaluation(cases, tmp_path / "out", backend, EvalConfig(methods=("raw", "spd", "label-box"),
                                                                       severities=("mild", "severe")),
                          log=lambda *_: None)
    by = {(r["method"], r["severity"]): r["dsc"] for r in rows}
    assert by[("spd", "mild")] == by[("spd", "severe")], "a given curve does not depend on the noise level"
    assert by[("spd", "mild")] > 0.4


def test_a_failing_case_is_reported_and_the_others_go_on(case_dir, backend, tmp_path, capsys):
    """One broken study (here a curve file that is not markups JSON) must not cost a cohort's run: it is
    left out whole, listed in the report and failures.json, and the CLI exits 1 after the others ran."""
    from SPDSegmentLib.frontends.cli import main

    cases = tmp_path / "cohort"
    shutil.copytree(case_dir / "abdomen_mr_aorta", cases / "a_broken")
    shutil.copytree(case_dir / "abdomen_mr_aorta", cases / "b_good")
    (cases / "a_broken" / "centerline.mrk.json").write_text("{ this is not JSON")
    failures: list[dict] = []
    rows = run_evaluation(cases, tmp_path / "out", backend, EvalConfig(methods=("raw", "spd"), severities=("mild",),
                                                                       thick_context=3),
                          log=lambda *_: None, failures=failures)
    assert {r["case"] for r in rows} == {"b_good"} and len(rows) == 2
    assert [f["case"] for f in failures] == ["a_broken"] and "JSON" in failures[0]["error"].upper()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Cases that failed" in report and "a_broken" in report
    assert "n = 2 (3 where thick);" in report, "the config's borrowing windows are stated"
    saved = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert saved[0]["case"] == "a_broken" and "Traceback" in saved[0]["traceback"]
    (cases / "b_good" / "centerline.mrk.json").write_text("[]")  # now every case fails: a clear error
    with pytest.raises(ValueError, match="every case failed"):
        run_evaluation(cases, tmp_path / "out", backend, EvalConfig(methods=("raw",), severities=("mild",)),
                       log=lambda *_: None)
    assert not (tmp_path / "out" / "report.md").exists(), "no report of an earlier run is left looking current"
    assert len(json.loads((tmp_path / "out" / "failures.json").read_text())) == 2
    shutil.rmtree(cases / "b_good")
    shutil.copytree(case_dir / "abdomen_mr_aorta", cases / "b_good")
    code = main(["evaluate", "--cases", str(cases), "--out", str(tmp_path / "cli"), "--methods", "raw",
                 "--severity", "mild", "--device", "cpu"])
    assert code == 1 and "a_broken" in capsys.readouterr().err
    with open(tmp_path / "cli" / "results.csv") as f:
        assert {r["case"] for r in csv.DictReader(f)} == {"b_good"}


def test_the_preset_option_windows_cases_whose_folder_names_none(case_dir, backend, tmp_path):
    """``evaluate --preset``: the window of a case without case.json (the held-out layout); a case.json
    that names its own preset keeps it."""
    from SPDSegmentLib.evaluation.harness import evaluate_case

    cases = tmp_path / "given"
    shutil.copytree(case_dir / "abdomen_mr_aorta", cases / "mr_aorta")
    config = EvalConfig(methods=("box",), severities=("mild",), preset="ct-soft")
    assert EvalConfig().preset == "auto"
    _rows, art = evaluate_case(find_cases(cases)[0], backend, config, "mild")
    assert art["preset"] == "mri"  # its case.json's
    (cases / "mr_aorta" / "case.json").unlink()
    _rows, art = evaluate_case(find_cases(cases)[0], backend, config, "mild")
    assert art["preset"] == "ct-soft"


def test_spd_extent_reuses_the_maps_of_spd_on_ct_only():
    """On CT the default prior does not gate, so ``spd-extent``'s maps are ``spd``'s: one key, one
    tracking run. On MRI the gate trims ``spd``'s maps: two keys. Other specs keep their own."""
    import numpy as np

    from SPDSegmentLib.evaluation.harness import _maps_key, load_method_prior
    from SPDSegmentLib.method.windowing import volume_window
    from SPDSegmentLib.volume import Volume

    rng = np.random.default_rng(0)
    ct = Volume(rng.integers(-1000, 1500, (4, 16, 16)).astype(np.int16), np.eye(4))
    mr = Volume(rng.integers(0, 900, (4, 16, 16)).astype(np.int16), np.eye(4))
    specs = ("sam-track", "sam-track-ungated", "sam-track-gated", "sam-track/fixed-boxes", "sam-votes")
    priors = {s: load_method_prior(s, None) for s in specs}
    windows = {vol: volume_window(v, "auto").preset for vol, v in (("ct", ct), ("mr", mr))}
    assert windows["mr"] == "mri" and windows["ct"] != "mri", windows
    keys = {vol: {s: _maps_key(s, priors[s], windows[vol]) for s in specs} for vol in ("ct", "mr")}
    assert keys["ct"]["sam-track"] == keys["ct"]["sam-track-ungated"]
    assert keys["mr"]["sam-track"] != keys["mr"]["sam-track-ungated"]
    for vol in ("ct", "mr"):
        assert len(set(keys[vol].values()) - {keys[vol]["sam-track"], keys[vol]["sam-track-ungated"]}) == 3
    assert _maps_key("sam-track", priors["sam-track"], "mri") != keys["ct"]["sam-track-ungated"], \
        "a CT windowed as MRI (an explicit preset) is gated"
