import numpy as np
import SimpleITK as sitk
from _helpers import oblique_flipped_geometry

from SPDSegmentLib.io import read_volume, write_volume
from SPDSegmentLib.volume import Volume


def test_ras_ijk_round_trip_is_exact_on_oblique_flipped_anisotropic_geometry():
    vol = Volume(np.zeros((10, 12, 14), np.int16), oblique_flipped_geometry())
    ijk = np.array([[0.25, 3.5, 7.75], [13.0, 11.0, 9.0], [6.6, 0.1, 2.2]])
    ras = vol.ijk_to_ras_points(ijk)
    np.testing.assert_allclose(vol.ras_to_ijk_points(ras), ijk, atol=1e-9)
    np.testing.assert_allclose(vol.spacing, [0.7, 0.9, 2.5])


def test_ras_to_ijk_matches_simpleitk_physical_point_conversion(tmp_path):
    vol = Volume(np.arange(10 * 12 * 14, dtype=np.int16).reshape(10, 12, 14), oblique_flipped_geometry())
    path = write_volume(vol, tmp_path / "v.nrrd")
    image = sitk.ReadImage(str(path))
    ras = np.array([[10.0, -25.0, 60.0], [3.0, -31.0, 52.0]])
    for p, ijk in zip(ras, vol.ras_to_ijk_points(ras)):
        lps = (-p[0], -p[1], p[2])
        np.testing.assert_allclose(image.TransformPhysicalPointToContinuousIndex(lps), ijk, atol=1e-6)
    back = read_volume(path)
    np.testing.assert_allclose(back.ijk_to_ras, vol.ijk_to_ras, atol=1e-6)
    np.testing.assert_array_equal(back.array, vol.array)


def test_slice_axis_is_the_axis_closest_to_superior_inferior():
    # a sagittally acquired volume: i runs S->I (flipped), j A->P, k L->R
    m = np.eye(4)
    m[:3, :3] = np.array([[0, 0, -1.0], [0, -1.0, 0], [-1.0, 0, 0]]) @ np.diag([1.0, 0.8, 3.0])
    vol = Volume(np.zeros((5, 6, 7)), m)
    assert vol.slice_axis == 0
    assert vol.num_slices == 7
    assert vol.slice_shape == (5, 6)  # rows = k, cols = j
    assert vol.in_plane_spacing == (3.0, 0.8)
    assert Volume(np.zeros((5, 6, 7)), oblique_flipped_geometry()).slice_axis == 2


def test_slice_view_and_back_are_inverse_and_index_consistent():
    m = np.eye(4)
    m[:3, :3] = np.array([[0, 0, -1.0], [0, -1.0, 0], [-1.0, 0, 0]])
    vol = Volume(np.random.default_rng(0).normal(size=(5, 6, 7)), m)
    src = vol.slices()
    np.testing.assert_array_equal(vol.to_array_order(src), vol.array)
    # a voxel addressed through both frames is the same voxel
    ijk = np.array([[3.0, 4.0, 2.0]])
    s, r, c = vol.ijk_to_src(ijk)[0].astype(int)
    i, j, k = ijk[0].astype(int)
    assert src[s, r, c] == vol.array[k, j, i]
    np.testing.assert_allclose(vol.src_to_ras(vol.ras_to_src(vol.ijk_to_ras_points(ijk))), vol.ijk_to_ras_points(ijk))


def test_singular_geometry_is_rejected_with_a_message():
    import pytest

    m = np.eye(4)
    m[2, 2] = 0
    with pytest.raises(ValueError, match="singular"):
        Volume(np.zeros((2, 2, 2)), m)
