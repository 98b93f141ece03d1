"""Garbage in gets a clear refusal, never a confident mask; nothing is ever lost.

One table of bad (and awkward-but-valid) inputs through the command line: each row asserts the
message, the exit code, and that no output file was written. The MRML logic's cases (same checks,
same code) are in SPDSegment/Testing/Python/test_reliability_logic.py. Then determinism, no network,
a cache that is never trusted blindly, and property-based tests of markups parsing and prompts.
"""
from __future__ import annotations

import json
import os
import socket
import stat

import numpy as np
import pytest
import SimpleITK as sitk
from _helpers import crop_slices, oblique_flipped_geometry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from SPDSegmentLib.frontends.cli import main
from SPDSegmentLib.io import InputError, markups_document, read_markups, write_markups, write_volume
from SPDSegmentLib.method.prompts import Centerline, slice_prompts
from SPDSegmentLib.volume import Volume

K0, K1 = 60, 72  # a slab of the CTA's descending aorta


@pytest.fixture(scope="module")
def slab(cta, cta_centerline):
    volume, _label = cta
    part = crop_slices(volume, K0, K1)
    src = volume.ras_to_src(cta_centerline.points_ras)
    curve = Centerline(cta_centerline.points_ras[(src[:, 0] > K0 - 1) & (src[:, 0] < K1)][::3], True, "aorta")
    return part, curve


@pytest.fixture()
def files(slab, tmp_path):
    """A good volume and centerline on disk, and a helper that writes variants of them."""
    volume, curve = slab
    good_volume = write_volume(volume, tmp_path / "ct.nrrd")
    good_curve = write_markups(tmp_path / "curve.mrk.json", markups_document("Curve", "aorta", curve.points_ras))

    class Files:
        root = tmp_path
        ct = good_volume
        curve_path = good_curve
        out = tmp_path / "out" / "seg.seg.nrrd"

        @staticmethod
        def volume(array, name="bad.nrrd", geometry=None):
            return write_volume(Volume(array, volume.ijk_to_ras if geometry is None else geometry), tmp_path / name)

        @staticmethod
        def markups(doc, name="bad.mrk.json"):
            path = tmp_path / name
            path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
            return path

    return Files


def _curve_doc(points, kind="Curve", system="LPS"):
    doc = markups_document(kind, "c", np.asarray(points, dtype=float))
    doc["markups"][0]["coordinateSystem"] = system
    if system == "RAS":
        for cp, p in zip(doc["markups"][0]["controlPoints"], points):
            cp["position"] = list(p)
    return doc


def _with_nan(doc):
    doc["markups"][0]["controlPoints"][0]["position"][0] = float("nan")  # json writes NaN
    return doc


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(["segment", *[str(a) for a in argv]])
    return code, capsys.readouterr().err


def _case_table():
    """(id, build(files, slab) -> extra CLI args or (args, env), expected exit, message regex)."""
    def arr(files, slab):
        return slab[0].array.astype(np.float32)

    def with_nan(files, slab):
        a = arr(files, slab).copy()
        a[2:4, 10:20, 10:20] = np.nan
        return ["--volume", files.volume(a)]

    def random_bytes(files, slab):
        path = files.root / "garbage.nrrd"
        path.write_bytes(os.urandom(4096))
        return ["--volume", path]

    def truncated(files, slab):
        path = files.root / "truncated.nrrd"
        data = files.ct.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        return ["--volume", path]

    def image_2d(files, slab):
        path = files.root / "flat.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(arr(files, slab)[0]), str(path))
        return ["--volume", path]

    def image_4d(files, slab):
        path = files.root / "four.nii.gz"
        frame = sitk.GetImageFromArray(np.zeros((3, 8, 8), np.float32))
        sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(path))  # a 4-D series (time or echo)
        return ["--volume", path]

    def rgb(files, slab):
        path = files.root / "rgb.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8, 3), np.uint8), isVector=True), str(path))
        return ["--volume", path]

    def points(files, slab):
        return slab[1].points_ras

    def in_air(files, slab):
        a = arr(files, slab).copy()
        a[:, :16, :16] = -1000.0  # air beside the body
        air = slab[0].src_to_ras(np.c_[np.arange(0, 12), np.full(12, 6.0), np.full(12, 6.0)])
        return ["--volume", files.volume(a, "air.nrrd"), "--centerline",
                files.markups(_curve_doc(air, system="RAS"), "air.mrk.json")]

    def curve_file(doc):
        return lambda files, slab: ["--centerline", files.markups(doc(files, slab))]

    def read_only_folder(files, slab):
        folder = files.root / "locked"
        folder.mkdir()
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return ["--out", folder / "seg.seg.nrrd"]

    def existing_output(files, slab):
        files.out.parent.mkdir(parents=True, exist_ok=True)
        files.out.write_text("precious")
        return []

    def foreign_prior(files, slab, tmp=None):
        import torch

        from SPDSegmentLib.method.saliency import PRIOR_FORMAT, build_saliency_head

        path = files.root / "foreign_prior.pt"
        torch.save({"format": PRIOR_FORMAT, "format_version": 1, "state_dict": build_saliency_head().state_dict(),
                    "metadata": json.dumps({"checkpoint_sha256": "0" * 64, "backend": "another-sam"})}, path)
        return ["--prior", path]

    return [
        ("missing volume", lambda f, s: ["--volume", f.root / "nope.nrrd"], 2, "Volume not found"),
        ("garbage volume", random_bytes, 2, "Cannot read volume"),
        ("truncated volume", truncated, 2, "Cannot read volume"),
        ("2-D volume", image_2d, 2, "expected a 3D image"),
        ("4-D volume", image_4d, 2, "expected a 3D image, got 4D"),
        ("RGB volume", rgb, 2, "scalar image"),
        ("all zeros", lambda f, s: ["--volume", f.volume(np.zeros_like(arr(f, s)))], 2, "one intensity everywhere"),
        ("all NaN", lambda f, s: ["--volume", f.volume(np.full_like(arr(f, s), np.nan))], 2, "every voxel is NaN"),
        ("NaN in 2 slices", with_nan, 2, r"NaN/infinite voxels \(slices [0-9-]+\).*--mask-nonfinite"),
        ("no contrast in the window", lambda f, s: ["--volume", f.volume(arr(f, s) / 100.0 + 2000.0)], 2,
         "grey levels"),
        ("missing markups", lambda f, s: ["--centerline", f.root / "nope.mrk.json"], 2, "Markups file not found"),
        ("malformed JSON", curve_file(lambda f, s: "{not json"), 2, "not a Slicer .mrk.json"),
        ("no markups", curve_file(lambda f, s: {"markups": []}), 2, "holds no markups"),
        ("two markups", curve_file(lambda f, s: {"markups": [_curve_doc(points(f, s))["markups"][0]] * 2}), 2,
         "holds 2 markups"),
        ("plane markup", curve_file(lambda f, s: {"markups": [{**_curve_doc(points(f, s))["markups"][0],
                                                                "type": "Plane"}]}), 2, "type 'Plane'"),
        ("no control points", curve_file(lambda f, s: {"markups": [{"type": "Curve", "controlPoints": []}]}), 2,
         "no defined control points"),
        ("NaN coordinate", curve_file(lambda f, s: _with_nan(_curve_doc(points(f, s)))), 2, "non-finite"),
        ("string coordinate", curve_file(lambda f, s: {"markups": [{"type": "Curve", "controlPoints": [
            {"label": "P-1", "position": [1, 2, 3]}, {"label": "P-2", "position": ["a", 2, 3]}]}]}), 2,
         r"bad\.mrk\.json: control point 2 \(P-2\) has a coordinate that is not a number"),
        ("unknown coordinate system", curve_file(lambda f, s: _curve_doc(points(f, s), system="IJK")), 2,
         "unknown coordinateSystem"),
        ("centerline beside the body (RAS read as LPS)", curve_file(
            lambda f, s: _curve_doc(points(f, s) * [-1, -1, 1] + [300, 300, 0], system="RAS")), 2, "same space"),
        ("centerline on no slice", curve_file(lambda f, s: _curve_doc(points(f, s) + [0, 0, 500], system="RAS")), 2,
         "does not pass through"),
        ("centerline in air", in_air, 2, "lies in air"),
        ("tau out of range", lambda f, s: ["--tau", "1.5"], 2, "tau must lie in"),
        ("tau not a number", lambda f, s: ["--tau", "high"], 2, "tau must be a number"),
        ("context out of range", lambda f, s: ["--context", "50"], 2, "context must lie in"),
        ("output not .seg.nrrd", lambda f, s: ["--out", f.root / "seg.nii.gz"], 2, "must end in .seg.nrrd"),
        ("output is a folder", lambda f, s: ["--out", f.root], 2, "must end in .seg.nrrd"),
        ("output exists", existing_output, 2, "already exists"),
        ("read-only output folder", read_only_folder, 2, "not a writable folder"),
        ("over the memory budget", lambda f, s: (["--device", "cpu"], {"SPDSEGMENT_MEMORY_GB": "0.0001"}), 2,
         "memory budget"),
        ("missing checkpoint", lambda f, s: ["--backend", "sam_vit_b"], 2, "needs a checkpoint file"),
        ("truncated checkpoint", lambda f, s: ["--backend", "sam_vit_b", "--checkpoint",
                                               f.markups("PK\x03\x04broken", "sam.pth")], 2,
         "not a readable PyTorch checkpoint"),
        ("missing prior file", lambda f, s: ["--prior", f.root / "prior.pt"], 2, "not found|No such file"),
        ("prior for another checkpoint", foreign_prior, 2, "was trained on embeddings of SAM checkpoint"),
        ("CUDA requested without a GPU", lambda f, s: ["--device", "cuda"], 2, "no CUDA GPU"),
    ]


CASES = _case_table()


@pytest.mark.parametrize("name,build,code,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_message_and_no_output(name, build, code, message, files, slab, capsys,
                                                           monkeypatch):
    if name == "read-only output folder" and os.geteuid() == 0:
        monkeypatch.setattr(os, "access", lambda path, mode: not str(path).endswith("locked") and os.path.exists(path))
    extra = build(files, slab)
    if isinstance(extra, tuple):
        extra, env = extra
        for key, value in env.items():
            monkeypatch.setenv(key, value)
    args = {"--volume": files.ct, "--centerline": files.curve_path, "--out": files.out, "--quiet": None,
            "--device": "cpu", "--preset": "ct-angio"}
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    argv = [a for k, v in args.items() for a in ((k,) if v is None else (k, v))]
    before = sorted(p for p in files.root.rglob("*"))
    try:
        got, err = _run(capsys, *argv)
    except SystemExit as exc:  # argparse refuses before anything runs
        got, err = exc.code, capsys.readouterr().err
    assert got == code, err
    assert __import__("re").search(message, err), err
    written = sorted(p for p in files.root.rglob("*")) != before
    assert not written, "a refused run must write nothing"
    if name == "output exists":
        assert files.out.read_text() == "precious"


def test_nan_voxels_can_be_masked_explicitly_and_the_result_says_so(files, slab, capsys):
    a = slab[0].array.astype(np.float32).copy()
    a[2:4, 10:20, 10:20] = np.nan
    bad = files.volume(a)
    code, err = _run(capsys, "--volume", bad, "--centerline", files.curve_path, "--out", files.out, "--quiet",
                     "--device", "cpu", "--preset", "ct-angio", "--mask-nonfinite")
    assert code == 0, err
    assert files.out.exists()


def test_blank_slices_are_nothing_to_segment_unless_forced(files, slab, capsys, backend):
    """Slices that hold no image (uniform, e.g. masked NaN) give no evidence: SAM's box-shaped mask
    there is not counted. With every point on such slices the CLI exits 3 and writes nothing; --force
    writes the empty result. With points on both kinds, only the slices with an image are segmented."""
    from SPDSegmentLib.method.pipeline import SegmentParams, segment
    from SPDSegmentLib.method.saliency import load_prior

    volume, curve = slab
    a = volume.array.astype(np.float32).copy()
    a[3:9] = 40.0  # six slices of nothing but soft-tissue grey
    blank = volume.with_array(a)
    src = blank.ras_to_src(curve.points_ras)
    on_blank = curve.points_ras[(src[:, 0] > 3.5) & (src[:, 0] < 7.5)]
    path = files.volume(a, "blank.nrrd")
    blank_curve = files.markups(_curve_doc(on_blank, system="RAS"), "blank.mrk.json")
    args = ["--volume", path, "--centerline", blank_curve, "--out", files.out, "--quiet", "--device", "cpu",
            "--preset", "ct-angio"]
    code, err = _run(capsys, *args)
    assert code == 3 and "found the structure at none" in err and "--force" in err
    assert not files.out.exists()
    code, _ = _run(capsys, *args, "--force")
    assert code == 0 and files.out.exists()
    result = segment(blank, curve, backend, load_prior("sam-track", backend),
                     SegmentParams(intensity_preset="ct-angio"))
    per_slice = blank.with_array(result.mask).slices().reshape(blank.num_slices, -1).sum(1)
    assert per_slice[3:9].sum() == 0, "no mask on slices without an image"
    assert (per_slice[[0, 1, 10, 11]] > 0).all(), "the slices with an image are segmented"


def test_oblique_flipped_anisotropic_volume_and_a_curve_in_one_slice_work(capsys, tmp_path, slab):
    """Awkward but valid: an oblique, flipped, anisotropic grid, and a curve that lies in one slice
    (an in-plane vessel). Both segment; neither is refused."""
    volume, _curve = slab
    path = write_volume(Volume(volume.array, oblique_flipped_geometry()), tmp_path / "oblique.nrrd")
    moved = Volume(volume.array, oblique_flipped_geometry())
    src = np.c_[np.full(8, 5.0), np.linspace(40, 70, 8), np.linspace(50, 60, 8)]
    in_plane = write_markups(tmp_path / "flat.mrk.json", markups_document("Curve", "flat", moved.src_to_ras(src)))
    code, err = _run(capsys, "--volume", path, "--centerline", in_plane, "--out", tmp_path / "a.seg.nrrd",
                     "--quiet", "--device", "cpu", "--preset", "ct-angio", "--force")
    assert code == 0, err
    prompts = slice_prompts(read_markups(in_plane), moved)
    assert list(prompts) == [5] and len(prompts[5]) >= 2


def test_the_same_inputs_give_a_byte_identical_segmentation(files, capsys):
    outputs = []
    for i in range(2):
        out = files.root / f"run{i}.seg.nrrd"
        code, err = _run(capsys, "--volume", files.ct, "--centerline", files.curve_path, "--out", out, "--quiet",
                         "--device", "cpu", "--preset", "ct-angio")
        assert code == 0, err
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_segment_runs_with_the_network_blocked(files, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during a run")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    code, err = _run(capsys, "--volume", files.ct, "--centerline", files.curve_path, "--out", files.out, "--quiet",
                     "--device", "cpu", "--preset", "ct-angio")
    assert code == 0, err


def test_a_truncated_or_foreign_cache_file_is_recomputed_and_logged(tmp_path, backend, cta, caplog):
    import torch

    from SPDSegmentLib.method.windowing import volume_window
    from SPDSegmentLib.sam.embedding_cache import EmbeddingCache

    volume, _ = cta
    slice_u8 = volume_window(volume, "ct-angio").apply(volume.slices()[70])
    reference = backend.embed(slice_u8).features.clone()
    folder = tmp_path / "cache"
    cache = EmbeddingCache(folder=folder)
    key = cache.key(backend.identity, slice_u8)
    cache.put(key, backend.embed(slice_u8))
    path = folder / f"{key}.pt"
    for damage in ("truncate", "foreign", "other-key"):
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[:1000])
        elif damage == "foreign":
            torch.save({"weights": torch.zeros(3)}, path)
        else:
            torch.save({"features": reference, "original_size": [1, 1], "input_size": [1, 1], "key": "another"}, path)
        fresh = EmbeddingCache(folder=folder)
        assert fresh.get(key) is None and fresh.rejected == 1, damage
        assert not path.exists() and "unusable" in caplog.text
        cache.put(key, backend.embed(slice_u8))
    assert torch.equal(EmbeddingCache(folder=folder).get(key).features, reference)
    assert not list(folder.glob("*.tmp")), "writes go to a temporary file renamed into place"


def test_two_processes_sharing_a_cache_folder_do_not_corrupt_it(tmp_path):
    """Two processes write the same embeddings into one folder at once; every file stays loadable."""
    import subprocess
    import sys

    code = ("import sys, torch; from SPDSegmentLib.sam.embedding_cache import EmbeddingCache, SliceEmbedding;"
            "c = EmbeddingCache(folder=sys.argv[1]);"
            "[c.put(f'k{i}', SliceEmbedding(torch.full((1, 256, 64, 64), float(i)), (64, 64), (256, 256))) "
            "for i in range(40)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(2)]
    assert all(p.wait() == 0 for p in procs)
    from SPDSegmentLib.sam.embedding_cache import EmbeddingCache

    cache = EmbeddingCache(folder=tmp_path)
    for i in range(40):
        item = cache.get(f"k{i}")
        assert item is not None and float(item.features[0, 0, 0, 0]) == float(i)
    assert cache.rejected == 0 and not list(tmp_path.glob("*.tmp"))


# --- property-based ---------------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                       max_size=4), max_leaves=20)
MARKUP = st.fixed_dictionaries({"type": st.sampled_from(["Curve", "Fiducial", "ClosedCurve", "Line", "Plane", 3]),
                                "coordinateSystem": st.sampled_from(["LPS", "RAS", "XYZ", None]),
                                "controlPoints": st.lists(st.fixed_dictionaries(
                                    {"position": st.lists(st.floats(allow_nan=True, allow_infinity=True)
                                                          | st.text(max_size=2) | st.integers(),
                                                          min_size=0, max_size=4),
                                     "positionStatus": st.sampled_from(["defined", "undefined", "preview"])}),
                                    max_size=6)})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(JSON, st.fixed_dictionaries({"markups": st.lists(MARKUP, max_size=3)})))
def test_markups_parsing_raises_only_documented_errors(doc, tmp_path):
    path = tmp_path / "random.mrk.json"
    path.write_text(json.dumps(doc))
    try:
        centerline = read_markups(path)
    except InputError:
        return
    assert np.all(np.isfinite(centerline.points_ras)) and centerline.points_ras.shape[1] == 3


@settings(max_examples=150, deadline=None)
@given(points=st.lists(st.tuples(*[st.floats(-500, 500)] * 3), min_size=1, max_size=30),
       spacing=st.tuples(*[st.floats(0.2, 5.0)] * 3), angle=st.floats(-np.pi, np.pi),
       flips=st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3), shape=st.tuples(*[st.integers(1, 12)] * 3),
       ordered=st.booleans())
def test_prompt_extraction_on_random_geometry_stays_inside_the_volume(points, spacing, angle, flips, shape, ordered):
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag(np.asarray(flips) * np.asarray(spacing))
    volume = Volume(np.zeros(shape, np.int16), m)
    prompts = slice_prompts(Centerline(np.asarray(points), ordered), volume)
    rows, cols = volume.slice_shape
    for t, pts in prompts.items():
        assert 0 <= t < volume.num_slices
        for p in pts:
            assert -0.5 <= p.row <= rows - 0.5 and -0.5 <= p.col <= cols - 0.5
