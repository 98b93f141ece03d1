import json

import numpy as np
import pytest
import SimpleITK as sitk
from _helpers import oblique_flipped_geometry

from SPDSegmentLib.evaluation import sample_data
from SPDSegmentLib.io import (
    InputError,
    read_label,
    read_markups,
    read_segmentation,
    read_volume,
    write_centerline,
    write_segmentation,
)
from SPDSegmentLib.method.prompts import Centerline
from SPDSegmentLib.volume import Volume


def _vol():
    rng = np.random.default_rng(0)
    return Volume(rng.integers(-100, 100, (8, 10, 12)).astype(np.int16), oblique_flipped_geometry(), "v")


def test_seg_nrrd_round_trip_keeps_geometry_names_and_voxels(tmp_path):
    vol = _vol()
    a = np.zeros(vol.array.shape, np.uint8)
    a[2:5, 3:7, 4:9] = 1
    b = np.zeros_like(a)
    b[6, 1:3, 1:3] = 1
    path = write_segmentation(vol, {"aorta": a, "vein": b}, tmp_path / "out.seg.nrrd")
    segs = read_segmentation(path)
    assert list(segs) == ["aorta", "vein"]
    np.testing.assert_array_equal(segs["aorta"].array, a)
    np.testing.assert_array_equal(segs["vein"].array, b)
    np.testing.assert_allclose(segs["aorta"].ijk_to_ras, vol.ijk_to_ras, atol=1e-6)
    image = sitk.ReadImage(str(path))
    assert image.GetMetaData("Segment0_Name") == "aorta"
    assert image.GetMetaData("Segment1_LabelValue") == "2"


def test_writers_never_overwrite_and_reject_overlaps(tmp_path):
    vol = _vol()
    m = np.ones(vol.array.shape, np.uint8)
    path = write_segmentation(vol, {"x": m}, tmp_path / "x.seg.nrrd")
    before = path.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        write_segmentation(vol, {"x": m * 0}, path)
    assert path.read_bytes() == before
    with pytest.raises(InputError, match="overlaps"):
        write_segmentation(vol, {"x": m, "y": m}, tmp_path / "y.seg.nrrd")
    with pytest.raises(InputError, match=".seg.nrrd"):
        write_segmentation(vol, {"x": m}, tmp_path / "x.nrrd")


def test_markups_round_trip_curve_and_point_list_in_ras(tmp_path):
    ras = np.array([[10.0, -20.0, 30.0], [11.5, -19.0, 33.0], [12.0, -18.5, 36.0]])
    for ordered in (True, False):
        path = write_centerline(Centerline(ras, ordered, "c"), tmp_path / f"c{ordered}.mrk.json")
        doc = json.loads(path.read_text())
        assert doc["markups"][0]["coordinateSystem"] == "LPS"
        assert doc["markups"][0]["type"] == ("Curve" if ordered else "Fiducial")
        back = read_markups(path)
        np.testing.assert_allclose(back.points_ras, ras)
        assert back.ordered == ordered


def test_bad_markups_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.mrk.json"
    bad.write_text("{}")
    with pytest.raises(InputError, match="not a Slicer .mrk.json"):
        read_markups(bad)
    bad.write_text(json.dumps({"markups": [{"type": "ROI", "controlPoints": []}]}))
    with pytest.raises(InputError, match="cannot serve as a centerline"):
        read_markups(bad)
    with pytest.raises(InputError, match="not found"):
        read_markups(tmp_path / "missing.mrk.json")


def test_real_dicom_folder_and_its_nifti_label_share_physical_space():
    volume = read_volume(sample_data.path("abdomen_ct_dicom/image"))
    assert volume.array.shape == (20, 512, 512)
    assert volume.slice_axis == 2
    liver = read_label(sample_data.path("abdomen_ct_dicom/labels.nii.gz"), volume, label_value=5)
    assert liver.sum() > 10000  # liver (value 5 in the 'total' class map) lands on the DICOM grid
    assert sample_data.class_map("abdomen_ct_dicom")[5] == "liver"
    assert volume.array[liver > 0].mean() > 0  # and on soft tissue, not air: geometry is right
