"""A clean centerline from a label: 3D skeleton -> longest geodesic path -> smoothed RAS polyline.

Used to make reference centerlines for the noise simulator and the demo. The skeleton graph links
26-connected skeleton voxels with edge weights in mm; the path is the graph's longest shortest path
(double sweep), which for a tube runs end to end and for a branched tree follows its main trunk.
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


def _path_ijk(mask_kji: np.ndarray, spacing_ijk: np.ndarray) -> np.ndarray:
    skel = skeletonize(largest_component(mask_kji))
    kji = np.argwhere(skel)
    if len(kji) < 2:
        raise ValueError("the label is too small to have a skeleton path")
    ijk = kji[:, ::-1].astype(float)
    pairs = cKDTree(ijk).query_pairs(r=np.sqrt(3) + 1e-6, output_type="ndarray")
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


def centerline_from_label(volume: Volume, mask_kji: np.ndarray, step_mm: float = 1.0,
                          smooth_mm: float = 4.0, name: str = "reference-centerline") -> Centerline:
    """Ordered RAS centerline along the label's main skeleton path."""
    ijk = _path_ijk(mask_kji, volume.spacing)
    ras = volume.ijk_to_ras_points(ijk)
    ras = resample_polyline(ras, step_mm)
    sigma = smooth_mm / step_mm
    if len(ras) > 4 * sigma:
        ras = ndimage.gaussian_filter1d(ras, sigma, axis=0, mode="nearest")
    return Centerline(ras, ordered=True, name=name)
