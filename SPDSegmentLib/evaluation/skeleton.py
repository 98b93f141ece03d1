"""A clean centerline from a label: 3D skeleton -> longest geodesic path -> ends extended to the
label's ends -> smoothed RAS polyline.

Used to make reference centerlines for the noise simulator and the demo, standing in for the curve
a radiologist clicks from one end of the visible structure to the other. The label is resampled to
isotropic voxels first (a skeleton of anisotropic voxels bends towards the fine axes: on a 0.98 x
0.98 x 2 mm CT a 20-slice aorta gave a 3-slice path). The skeleton graph links 26-connected voxels
with edge weights in mm; the path is its longest shortest path (double sweep), which for a tube runs
end to end and for a branched tree follows its main trunk. A skeleton stops about one radius short of
where a tube leaves the volume or ends, so each end is then continued slice by slice through the
label (nearest component centroid) as far as the label goes.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from ..method.prompts import Centerline
from ..volume import Volume


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask > 0)
    if n == 0:
        raise ValueError("the label is empty")
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _isotropic(mask_kji: np.ndarray, spacing_ijk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The label's bounding box resampled to cubic voxels: (mask, origin in k,j,i, zoom per k,j,i)."""
    nz = np.argwhere(mask_kji)
    lo, hi = nz.min(0), nz.max(0) + 1
    crop = mask_kji[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    spacing_kji = np.asarray(spacing_ijk, dtype=float)[::-1]
    iso = max(float(spacing_kji.min()), 0.5)
    zoom = spacing_kji / iso
    if np.allclose(zoom, 1.0):
        return crop, lo, np.ones(3)
    return ndimage.zoom(crop.astype(np.uint8), zoom, order=0) > 0, lo, zoom


def _path_ijk(mask_kji: np.ndarray, spacing_ijk: np.ndarray) -> np.ndarray:
    iso_mask, origin, zoom = _isotropic(largest_component(mask_kji), spacing_ijk)
    skel = skeletonize(np.pad(iso_mask, 1))
    kji = np.argwhere(skel).astype(float) - 1.0
    if len(kji) < 2:
        raise ValueError("the label is too small to have a skeleton path")
    kji = origin + (kji + 0.5) / zoom - 0.5  # back to the original voxel grid (voxel centres)
    ijk = kji[:, ::-1].astype(float)
    iso_step = (np.asarray(spacing_ijk, dtype=float)[::-1] / zoom)[0]
    reach = np.sqrt(3) * iso_step * 1.0001  # 26-neighbours on the isotropic grid, in mm
    pairs = cKDTree(ijk * spacing_ijk).query_pairs(r=reach, output_type="ndarray")
    weights = np.linalg.norm((ijk[pairs[:, 0]] - ijk[pairs[:, 1]]) * spacing_ijk, axis=1)
    n = len(ijk)
    graph = coo_matrix((weights, (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    main = np.flatnonzero(comp == np.bincount(comp).argmax())
    sub = graph[main][:, main]
    d0 = dijkstra(sub, directed=False, indices=0)
    a = int(np.argmax(np.where(np.isfinite(d0), d0, -1)))
    da, pred = dijkstra(sub, directed=False, indices=a, return_predecessors=True)
    b = int(np.argmax(np.where(np.isfinite(da), da, -1)))
    order = [b]
    while order[-1] != a:
        order.append(int(pred[order[-1]]))
    return ijk[main[np.array(order[::-1])]]


def resample_polyline(points: np.ndarray, step_mm: float) -> np.ndarray:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arc = np.r_[0.0, np.cumsum(seg)]
    if arc[-1] == 0:
        return points[:1]
    samples = np.linspace(0.0, arc[-1], max(2, int(np.ceil(arc[-1] / step_mm)) + 1))
    return np.stack([np.interp(samples, arc, points[:, d]) for d in range(3)], axis=1)


def _extend_end(volume: Volume, label_src: np.ndarray, path_src: np.ndarray, tail_mm: float = 6.0) -> list:
    """Continue the path's last point slice by slice through the label, in the direction the path
    leaves along the slice axis: each new point is the centroid of the label component on the next
    slice nearest the previous point (within a few radii)."""
    spacing = np.array([volume.slice_spacing, *volume.in_plane_spacing])
    end = path_src[-1]
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(path_src[::-1] * spacing, axis=0), axis=1))]
    back = path_src[::-1][min(int(np.searchsorted(arc, tail_mm)), len(path_src) - 1)]
    direction = np.sign(np.round(end[0] - back[0], 3))
    if direction == 0:
        return []
    out, previous = [], end
    t = int(np.floor(end[0]) + 1) if direction > 0 else int(np.ceil(end[0]) - 1)
    while 0 <= t < len(label_src):
        labels, n = ndimage.label(label_src[t])
        if n == 0:
            break
        centroids = np.array(ndimage.center_of_mass(label_src[t], labels, range(1, n + 1)))
        dist = np.linalg.norm((centroids - previous[1:]) * spacing[1:], axis=1)
        radius = np.sqrt(label_src[t].sum() / max(n, 1) * spacing[1] * spacing[2] / np.pi)
        best = int(np.argmin(dist))
        if dist[best] > max(3 * radius, 3 * spacing[0]):
            break
        previous = np.array([t, *centroids[best]])
        out.append(previous)
        t += int(direction)
    return out


def centerline_from_label(volume: Volume, mask_kji: np.ndarray, step_mm: float = 1.0,
                          smooth_mm: float = 4.0, name: str = "reference-centerline") -> Centerline:
    """Ordered RAS centerline along the label's main skeleton path, continued to the label's ends."""
    ijk = _path_ijk(mask_kji, volume.spacing)
    src = volume.ijk_to_src(ijk)
    label_src = volume.with_array((mask_kji > 0).astype(np.uint8)).slices() > 0
    tail = _extend_end(volume, label_src, src)
    head = _extend_end(volume, label_src, src[::-1])
    src = np.vstack([*head[::-1], src, *tail]) if head or tail else src
    ras = volume.src_to_ras(src)
    ras = resample_polyline(ras, step_mm)
    sigma = smooth_mm / step_mm
    if len(ras) > 4 * sigma:
        ras = ndimage.gaussian_filter1d(ras, sigma, axis=0, mode="nearest")
    return Centerline(ras, ordered=True, name=name)
