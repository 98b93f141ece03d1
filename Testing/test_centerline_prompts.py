import numpy as np
from _helpers import oblique_flipped_geometry

from SPDSegmentLib.evaluation.skeleton import centerline_from_label
from SPDSegmentLib.method.prompts import Centerline, prompt_extent, slice_prompts
from SPDSegmentLib.volume import Volume


def _vol(m=None, shape=(20, 30, 40)):
    return Volume(np.zeros(shape, np.int16), oblique_flipped_geometry() if m is None else m)


def test_curve_crossings_are_interpolated_exactly_on_oblique_geometry():
    vol = _vol()
    a_src, b_src = np.array([2.0, 5.0, 6.0]), np.array([9.0, 19.0, 27.0])
    curve = Centerline(vol.src_to_ras([a_src, b_src]))
    prompts = slice_prompts(curve, vol)
    assert sorted(prompts) == list(range(2, 10))
    for t, pts in prompts.items():
        assert len(pts) == 1
        u = (t - a_src[0]) / (b_src[0] - a_src[0])
        expected = a_src + u * (b_src - a_src)
        assert abs(pts[0].row - expected[1]) < 1e-9 and abs(pts[0].col - expected[2]) < 1e-9


def test_a_u_shaped_curve_gives_two_separate_groups_on_one_slice():
    vol = _vol(np.diag([1.0, 1.0, 2.0, 1.0]))
    # up the left limb (row 5), over the top at slice 12, down the right limb (row 25)
    src = np.array([[2, 5, 10], [12, 5, 10], [12.5, 15, 10], [12, 25, 10], [2, 25, 10]], float)
    prompts = slice_prompts(Centerline(vol.src_to_ras(src)), vol, group_distance_mm=10)
    rows = sorted(p.row for p in prompts[6])
    assert np.allclose(rows, [5, 25])
    assert len({p.group for p in prompts[6]}) == 2


def test_a_crossing_on_the_outer_half_of_an_edge_pixel_lands_on_that_pixel():
    """Rounding ``rows - 0.5`` gives ``rows`` on an even size (round half to even: 29.5 -> 30), past
    the slice: an IndexError in CPD, the renderer, the priors and the gate. Kept points sit on the
    edge pixel instead, on every edge (the lower ones round to 0 either way)."""
    vol = _vol(np.diag([1.0, 1.0, 2.0, 1.0]))
    rows, cols = vol.slice_shape
    src = np.array([[2.0, rows - 0.5, 3.0], [3.0, 5.0, -0.5], [4.0, -0.4, cols - 0.5], [5.0, rows - 0.4, 3.0]])
    prompts = slice_prompts(Centerline(vol.src_to_ras(src), ordered=False), vol)
    assert sorted(prompts) == [2, 3, 4], "a point past the outer half is outside the volume and dropped"
    assert [prompts[t][0].pixel for t in (2, 3, 4)] == [(rows - 1, 3), (5, 0), (0, cols - 1)]
    assert (prompts[2][0].row, prompts[4][0].col) == (rows - 1.0, cols - 1.0)
    image = np.zeros(vol.slice_shape)
    for t in (2, 3, 4):
        image[prompts[t][0].pixel] = t  # indexes without an IndexError or a wrap-around


def test_point_list_keeps_points_within_half_a_voxel_and_drops_outside_points():
    vol = _vol(np.diag([1.0, 1.0, 2.0, 1.0]))
    src = np.array([[3.2, 4, 4], [3.6, 5, 5], [7.0, 6, 6], [7.0, 100, 6], [30.0, 6, 6]])
    prompts = slice_prompts(Centerline(vol.src_to_ras(src), ordered=False), vol)
    assert sorted(prompts) == [3, 4, 7]
    assert len(prompts[7]) == 1  # the in-plane outlier at row 100 is outside the volume
    assert prompt_extent(prompts, 2, vol.num_slices) == range(1, 10)


def test_real_cta_reference_centerline_crosses_arch_slices_twice(cta):
    volume, label = cta
    curve = centerline_from_label(volume, label)
    prompts = slice_prompts(curve, volume)
    label_src = volume.with_array(label).slices()
    two = [t for t, pts in prompts.items() if len({p.group for p in pts}) == 2]
    assert len(two) > 20, "the aortic arch should give two crossings on many axial slices"
    on_label = np.mean([label_src[t][p.pixel] > 0 for t, pts in prompts.items() for p in pts])
    assert on_label > 0.95


def test_a_curve_running_inside_a_slice_is_sampled_along_the_run():
    """In-plane sampling (``in_plane=True``, the default). A curve that climbs to slice 12, runs 20 mm
    inside it and climbs on: slice 12 gets points every slice thickness (2 mm here) along the run, not
    one crossing; steep pieces get none extra, and a point list is left as it is."""
    vol = _vol(np.diag([1.0, 1.0, 2.0, 1.0]))  # 2 mm slices, 1 mm pixels
    src = np.array([[2, 5, 10], [12, 5, 10], [12, 25, 10], [19, 25, 10]], float)
    curve = Centerline(vol.src_to_ras(src))
    prompts = slice_prompts(curve, vol, in_plane=True)
    rows = sorted(p.row for p in prompts[12])
    assert len(rows) >= 10 and rows[0] <= 7.5 and rows[-1] >= 22.5
    assert np.all(np.diff(rows) <= 2.0 + 1e-6)
    assert all(len(prompts[t]) == 1 for t in range(3, 11)), "steep slices keep their one crossing"
    without = slice_prompts(curve, vol, in_plane=False)  # crossings only
    assert len(without[12]) <= 2
    points = slice_prompts(Centerline(vol.src_to_ras(src), ordered=False), vol, in_plane=True)
    assert sum(len(v) for v in points.values()) == 4


def test_a_shallow_but_not_in_plane_curve_gets_no_extra_points():
    """A curve at 45 degrees to the slices runs one slice thickness in-plane per slice: crossings only."""
    vol = _vol(np.diag([1.0, 1.0, 2.0, 1.0]))
    src = np.array([[2, 5, 10], [12, 25, 10]], float)  # 2 pixels (2 mm) per 2 mm slice
    prompts = slice_prompts(Centerline(vol.src_to_ras(src)), vol, in_plane=True)
    assert all(len(v) == 1 for v in prompts.values())


def test_a_slicer_curve_file_runs_as_a_spline_through_its_points(tmp_path):
    """A curve read from a .mrk.json runs as Slicer draws it: a cardinal spline through the control
    points (compared with Slicer's own curve on real MRML in the module's tests), not straight lines.
    A line stays straight, a point list unordered, and a closed curve closes without a repeated point."""
    import pytest

    from SPDSegmentLib.io import markups_document, read_markups, write_markups
    from SPDSegmentLib.method.prompts import SLICER_POINTS_PER_SEGMENT, slicer_curve_points

    vol = _vol(np.eye(4), shape=(30, 60, 60))
    # a bend clicked sparsely: three points, the middle one 20 px off the ends' line
    control = vol.src_to_ras(np.array([[2.0, 10.0, 30.0], [14.0, 30.0, 30.0], [26.0, 10.0, 30.0]]))
    curves = {}
    for kind in ("Curve", "ClosedCurve", "Line", "Fiducial"):
        path = write_markups(tmp_path / f"{kind}.mrk.json", markups_document(kind, kind, control))
        curves[kind] = read_markups(path)
    assert [(c.ordered, c.interpolation) for c in curves.values()] == [
        (True, "spline"), (True, "closed-spline"), (True, "linear"), (False, "linear")]
    for c in curves.values():
        np.testing.assert_allclose(c.points_ras, control, atol=1e-9)  # the control points, as read
    spline = curves["Curve"].path_ras()
    assert len(spline) == 2 * SLICER_POINTS_PER_SEGMENT + 1
    np.testing.assert_allclose(spline[::SLICER_POINTS_PER_SEGMENT], control, atol=1e-9)  # through every point
    closed = curves["ClosedCurve"].path_ras()
    assert len(closed) == 3 * SLICER_POINTS_PER_SEGMENT + 1 and np.allclose(closed[0], closed[-1])
    np.testing.assert_array_equal(curves["Line"].path_ras(), control)
    # two points: the spline stays on the segment between them
    two = slicer_curve_points(control[:2])
    direction = (control[1] - control[0]) / np.linalg.norm(control[1] - control[0])
    off = (two - control[0]) - np.outer((two - control[0]) @ direction, direction)
    assert np.abs(off).max() < 1e-9
    # on the slices between the points the spline bulges past the chord, towards the bend's outside
    by_spline, by_chord = slice_prompts(curves["Curve"], vol), slice_prompts(curves["Line"], vol)
    assert sorted(by_spline) == sorted(by_chord) == list(range(2, 27))
    assert by_spline[8][0].row > by_chord[8][0].row + 1.0
    assert abs(by_spline[14][0].row - 30.0) < 1e-6 and abs(by_chord[14][0].row - 30.0) < 1e-6
    with pytest.raises(ValueError, match="interpolation"):
        Centerline(control, interpolation="bezier")
    # written back, each kind reads back as the same kind of curve
    from SPDSegmentLib.io import write_centerline
    for kind, c in curves.items():
        back = read_markups(write_centerline(c, tmp_path / f"back_{kind}.mrk.json"))
        expected = (c.ordered, c.interpolation) if kind != "Line" else (True, "spline")  # a line is written as a curve
        assert (back.ordered, back.interpolation) == expected, kind
        np.testing.assert_allclose(back.points_ras, control, atol=1e-9)
