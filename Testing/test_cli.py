import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from _helpers import crop_slices

from SPDSegmentLib.evaluation.metrics import dice
from SPDSegmentLib.frontends.cli import main
from SPDSegmentLib.io import read_segmentation, write_centerline, write_volume
from SPDSegmentLib.method.prompts import Centerline


def test_segment_command_writes_a_slicer_segmentation_prompts_saliency_and_png(cta, cta_centerline, tmp_path, capsys):
    volume, label = cta
    slab = crop_slices(volume, 40, 48)
    vpath = write_volume(slab, tmp_path / "ct.nrrd")
    src = volume.ras_to_src(cta_centerline.points_ras)
    part = Centerline(cta_centerline.points_ras[(src[:, 0] > 39) & (src[:, 0] < 49)], name="aorta")
    cpath = write_centerline(part, tmp_path / "aorta.mrk.json")
    out = tmp_path / "aorta.seg.nrrd"
    args = ["segment", "--volume", str(vpath), "--centerline", str(cpath), "--out", str(out), "--quiet",
            "--preset", "ct-angio", "--device", "cpu", "--prompts-out", str(tmp_path / "p.mrk.json"),
            "--saliency-out", str(tmp_path / "sal.nrrd"), "--png", str(tmp_path / "o.png"),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["kept"] > 0
    seg = read_segmentation(out)
    assert list(seg) == ["aorta"]
    np.testing.assert_allclose(seg["aorta"].ijk_to_ras, slab.ijk_to_ras, atol=1e-5)
    assert dice(seg["aorta"].array, label[40:48]) > 0.8
    prompts = json.loads((tmp_path / "p.mrk.json").read_text())["markups"][0]["controlPoints"]
    assert {p["label"].split("<")[0] for p in prompts} >= {"kept"}
    assert sitk.ReadImage(str(tmp_path / "sal.nrrd")).GetSize() == tuple(slab.shape_ijk)
    assert (tmp_path / "o.png").stat().st_size > 10_000
    assert list((tmp_path / "cache").glob("*.pt")), "embeddings persisted in the cache folder"
    # running again must not overwrite the user's file
    before = out.read_bytes()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_bad_input_exits_2_with_an_actionable_message(tmp_path, capsys):
    assert main(["segment", "--volume", str(tmp_path / "none.nrrd"), "--centerline", "x.mrk.json",
                 "--out", str(tmp_path / "o.seg.nrrd")]) == 2
    assert "Volume not found" in capsys.readouterr().err
    assert not (tmp_path / "o.seg.nrrd").exists()


def test_help_is_available_from_the_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "SPDSegmentLib", "segment", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for option in ("--method", "--backend", "--checkpoint", "--tau", "--context", "--centerline"):
        assert option in out


def test_evaluate_sample_uses_the_shipped_prior_and_tags_held_out_cases(cta, tmp_path):
    import csv

    volume, label = cta
    case = tmp_path / "cases" / "cta_slab"
    case.mkdir(parents=True)
    write_volume(crop_slices(volume, 60, 68), case / "image.nii.gz")
    write_volume(crop_slices(volume, 60, 68).with_array(label[60:68].astype(np.uint8)), case / "label.nii.gz")
    (case / "case.json").write_text(json.dumps({"structure": "aorta", "preset": "ct-angio"}))
    out = tmp_path / "eval"
    assert main(["evaluate-sample", "--cases", str(tmp_path / "cases"), "--out", str(out), "--device", "cpu",
                 "--methods", "raw", "spd", "spd-prior2"]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["raw", "spd", "spd-trained"]
    report = (out / "report.md").read_text()
    assert "second prior `trained-aorta`" in report and "| cta_slab | held-out | clinical |" in report
    assert "mean of 1 held-out" in report


def test_gap_filling_switch_reaches_the_run_and_evaluate_refuses_per_run_switches(tmp_path, capsys):
    from SPDSegmentLib.frontends.cli import _build_parser
    from SPDSegmentLib.frontends.cli_common import segment_params
    from SPDSegmentLib.method.pipeline import SegmentParams

    base = ["segment", "--volume", "v.nrrd", "--centerline", "c.mrk.json", "--out", "o.seg.nrrd"]
    assert segment_params(_build_parser().parse_args(base)).propagate is True
    assert segment_params(_build_parser().parse_args([*base, "--no-propagate"])).propagate is False
    assert segment_params(_build_parser().parse_args(base)).leak_limit == SegmentParams().leak_limit
    assert segment_params(_build_parser().parse_args([*base, "--no-leak-limit"])).leak_limit is None
    for extra in (["--no-propagate"], ["--consistency"], ["--method", "raw"], ["--fallback", "peak"],
                  ["--no-leak-limit"]):
        code = main(["evaluate", "--cases", str(tmp_path / "none"), "--out", str(tmp_path / "out"), *extra])
        assert code == 2
        err = capsys.readouterr().err
        assert f"{extra[0]} would be ignored" in err and "--methods" in err, err
    assert not (tmp_path / "out").exists(), "refused before anything is written"
    # the switches' defaults, given explicitly, and no switch at all are not refused (the missing folder is)
    assert main(["evaluate", "--cases", str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--method", "spd",
                 "--fallback", "empty"]) == 2
    err = capsys.readouterr().err
    assert "would be ignored" not in err and "none" in err, err


def test_all_panels_is_an_option_of_both_evaluation_commands():
    from SPDSegmentLib.frontends.cli import _build_parser

    parser = _build_parser()
    for command in (["evaluate", "--cases", "c"], ["evaluate-sample"]):
        assert parser.parse_args([*command, "--out", "o"]).all_panels is False
        assert parser.parse_args([*command, "--out", "o", "--all-panels"]).all_panels is True


def test_the_thick_window_switch_reaches_the_run_and_the_evaluation(capsys):
    """``--thick-context N`` sets ``SegmentParams.thick_context`` for segment, and the evaluation's
    config for evaluate (all SPD methods take it, as they take ``--context``); off by default."""
    from SPDSegmentLib.frontends.cli import _build_parser
    from SPDSegmentLib.frontends.cli_common import segment_params

    base = ["segment", "--volume", "v.nrrd", "--centerline", "c.mrk.json", "--out", "o.seg.nrrd"]
    assert segment_params(_build_parser().parse_args(base)).thick_context is None
    assert segment_params(_build_parser().parse_args([*base, "--thick-context", "3"])).thick_context == 3
    with pytest.raises(SystemExit):
        _build_parser().parse_args([*base, "--thick-context", "11"])
    assert "thick-context" in capsys.readouterr().err
    args = _build_parser().parse_args(["evaluate", "--cases", "c", "--out", "o", "--thick-context", "3"])
    assert args.thick_context == 3
