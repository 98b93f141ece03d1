"""The evaluation contract: case layout, results.csv schema, report, on a real (small) MRI case."""
import csv
import shutil

import pytest

from SPDSegmentLib.cases import build_sample_cases, find_cases
from SPDSegmentLib.evaluation import COLUMNS, EvalConfig, run_evaluation
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
    config = EvalConfig(methods=("raw", "spd", "label-box"), severities=("mild", "severe"), seed=0)
    rows = run_evaluation(case_dir, tmp_path, backend, config, log=lambda *_: None)
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0].keys()) == COLUMNS
    assert len(table) == 1 * 3 * 2  # case x method x severity
    assert {r["method"] for r in table} == {"raw", "spd", "label-box"}
    for r in table:
        assert 0.0 <= float(r["dsc"]) <= 1.0 and float(r["seconds"]) >= 0
    upper = [r for r in rows if r["method"] == "label-box"]
    assert all(r["dsc"] > 0.5 for r in upper), "a box from the label is the upper bound and must work"
    report = (tmp_path / "report.md").read_text()
    for heading in ("Headline: raw prompts vs SPD", "Noise model", "Cases and sources", "Per case"):
        assert heading in report
    assert (tmp_path / "dsc_by_method.png").exists() and (tmp_path / "dsc_vs_severity.png").exists()


def test_case_layout_errors_are_actionable(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "image.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="needs image"):
        find_cases(tmp_path)
    with pytest.raises(InputError, match="not found"):
        find_cases(tmp_path / "nothing")
