"""3-D continuity: follow the structure through the slices as connected objects, so that the whole
curve, not a fixed window, decides which of the user's points lie on the target.

A structure is one connected object through the volume. Where the user's points drift onto a
neighbour, the target does not stop: it continues on those slices, only without points. So:

1. **Seeds.** A point group that no tracked object explains gets a SAM mask from a box around it,
   at the smallest of several sizes where the mask is *enclosed* (it does not run along the box's
   edge), confident (SAM's predicted IoU) and *stable* (the next larger box gives the same mask),
   so the extent comes from the image, not from a constant. A box that SAM fills completely, or
   one on a blank patch, is no seed: on an uninformative slice nothing counts as evidence.
   Where the chosen mask is much larger than the smallest enclosed mask holding the point, both are
   seeded, as a *container* and its *part* (``part_hypotheses``); a group that runs along the slice
   (the curve in the plane) seeds in pieces (``seed_piece_mm``).
2. **Tracking.** Every object is carried to the next slice with a box around its mask, decoded by
   SAM, and kept only when the new mask passes the gates (predicted IoU, overlap with the previous
   mask, area change). A mask that runs along its box's edge is re-decoded once with a larger box
   (growth, gated the same way), so large structures reach their extent without following leaks.
   Objects keep going through slices without points for as long as they have been supported, so
   the target bridges gaps and drift stretches of any length. Objects that meet are merged.
   Objects that start late are also tracked backwards.
3. **Selection.** Each object is supported by the points inside it (a point is the smallest
   holder's). Objects are ranked as families, a container with its parts, their points pooled; the
   best-supported member of the best family is the target. Another object is kept when it is well
   supported, unless it is an *excursion*: its points take over from the target's on a stretch of
   slices that the target's own points bracket on both sides, while the target itself continues
   through that stretch. That is a drift, however long it is. (When the best family's target is
   itself such an excursion from another family, that family is the structure.) A centerline runs
   through the middle of its structure: an object whose points lie along its rim (``rim_depth``) is
   a neighbour the curve runs beside, such as the liver beside the portal vein. Within its family,
   a part that the curve runs through is the candidate; a family that lies wholly beside the curve
   gives way to one the curve runs through, when that one has at least half its points; and such a
   neighbour larger than the target is not kept.

The result is one map per slice (1 on the kept objects, 0 elsewhere): a saliency prior with the same
contract as the others, so CPD and rendering are unchanged. It also reports, per slice, the masks
that bridge slices without trusted points, for propagation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .prompts import SlicePrompts

SEED_HALF_SIZES_MM = (6.0, 9.0, 13.0, 19.0, 28.0, 40.0, 60.0, 90.0)
FIXED_HALF_SIZES_MM = (6.0, 12.0, 24.0)  # the window-voting prior's sizes, for the ablation


@dataclass(frozen=True)
class TrackingParams:
    """Gates and limits of the tracker (see module docstring). ``extent=False`` is the ablation
    without extent from the image: seeds take the best-scoring of three fixed box sizes, no growth."""

    extent: bool = True
    min_score: float = 0.55  # SAM's predicted IoU below which a seed mask is no evidence
    min_follow_score: float = 0.45  # the same for a mask carried from the neighbouring slice
    edge_fraction: float = 0.06  # of the box border covered by the mask: above it, "touches the edge"
    stable_dice: float = 0.7  # (nearly) the same mask from the next larger box
    grow_score_margin: float = 0.05  # a larger enclosing mask replaces a seed when SAM is this much surer
    grow_area_limit: float = 3.0  # ... and it is at most this many times larger (a lumen's vessel, not the body)
    # seed rules (docs/method.md, "How the seed rules were measured"); False / None switch them off
    part_hypotheses: bool = True  # also seed the enclosed part of a much larger chosen mask
    part_area_ratio: float = 3.0  # a seed mask this many times larger than an enclosed part holding the point:
    #                               both are hypotheses (the vessel inside the liver, or a patch of the liver)
    part_inside: float = 0.9  # fraction of the part that the container must cover
    part_min_slices: int = 3  # slices a part needs points on, besides its seeding slices, to be the target
    #                           rather than its container (two clicks do not tell a lumen from its vessel)
    seed_piece_mm: float | None = 12.0  # a slice's point group longer than this seeds in pieces (None: never)
    box_fill_limit: float = 0.92  # a mask filling its box this much is the box, not a structure
    min_texture: float = 2.0  # grey-level sd inside a seed box below which the patch is blank
    min_overlap: float = 0.25  # Dice with the previous slice's mask to continue an object
    area_ratio: tuple[float, float] = (0.5, 1.6)  # allowed area change per slice
    max_growth: float = 1.8  # of the object's median seeded area: masks never balloon along a leak
    attach_mm: float = 3.0  # a point this close to an object's mask belongs to it
    margin_fraction: float = 0.15  # box margin around a mask, of its size
    min_margin_px: float = 2.0
    merge_dice: float = 0.5
    link_gap_slices: int = 3  # objects that end and start this close, in the same place, are one
    min_gap_slices: int = 6  # an object may cross at least this many slices without points
    min_support_fraction: float = 0.1  # of the target's support, for another object to be kept
    min_support_points: int = 3
    rim_depth: float | None = 0.3  # median depth of its points, as a fraction of the mask's largest
    #                                inscribed radius, below which the curve runs along an object's rim
    rim_min_points: int = 3  # points inside an object needed to judge where the curve runs in it


@dataclass
class TrackedObject:
    oid: int
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    support: dict[int, int] = field(default_factory=dict)  # slice -> own points inside
    seeded: set = field(default_factory=set)  # slices where a point seeded the mask
    parts: set = field(default_factory=set)  # oids of the part hypotheses seeded together with this mask
    shared: dict[int, int] = field(default_factory=dict)  # slice -> seeding points counted for a container too
    depths: list = field(default_factory=list)  # its points' depths in its final masks, 0 (rim) to 1 (middle)
    unsupported_run: int = 0
    active: bool = True

    @property
    def total_support(self) -> int:
        return int(sum(self.support.values()))

    @property
    def shared_total(self) -> int:
        """Seeding points counted for its container as well (a part's)."""
        return int(sum(self.shared.values()))

    @property
    def support_slices(self) -> list[int]:
        return sorted(t for t, n in self.support.items() if n > 0)

    def reference_area(self) -> float:
        areas = [float(self.masks[t].sum()) for t in self.seeded if t in self.masks]
        return float(np.median(areas)) if areas else float(next(iter(self.masks.values())).sum())

    def median_depth(self, params: TrackingParams) -> float | None:
        """Median depth of the curve's points in this object (see ``rim_depth``); None when the rule
        is off or too few points lie inside it to tell."""
        if params.rim_depth is None or len(self.depths) < params.rim_min_points:
            return None
        return float(np.median(self.depths))

    def on_rim(self, params: TrackingParams) -> bool:
        """The curve runs along this object's rim, not through its middle."""
        depth = self.median_depth(params)
        return depth is not None and depth < params.rim_depth

    def centred(self, params: TrackingParams) -> bool:
        """The curve runs through this object's middle: positive evidence, unlike ``not on_rim``
        (an object with too few points inside it is neither)."""
        depth = self.median_depth(params)
        return depth is not None and depth >= params.rim_depth

    def max_gap(self, params: TrackingParams) -> int:
        """Slices it may cross without points: twice as many as it has supported slices (so the
        target bridges drift and gaps of any length), at least ``min_gap_slices``."""
        return max(params.min_gap_slices, 2 * len(self.support_slices))

    def absorb(self, other: TrackedObject) -> None:
        """Take over ``other`` (the same structure): its points, and its masks where it is the
        better-supported or more confident one (never a union, which would grow along leaks)."""
        for t, m in other.masks.items():
            mine = (self.support.get(t, 0), self.scores.get(t, -1.0))
            theirs = (other.support.get(t, 0), other.scores[t])
            if t not in self.masks or theirs > mine:
                self.masks[t], self.scores[t] = m, other.scores[t]
        for t, n in other.support.items():
            self.support[t] = self.support.get(t, 0) + n
        for t, n in other.shared.items():
            self.shared[t] = self.shared.get(t, 0) + n
        self.seeded |= other.seeded
        self.parts |= other.parts
        self.unsupported_run = min(self.unsupported_run, other.unsupported_run)


@dataclass
class TrackingResult:
    objects: list[TrackedObject]
    kept: list[int]  # oids
    reasons: dict[int, str]  # oid -> why kept or rejected
    decodes: int = 0

    def kept_objects(self) -> list[TrackedObject]:
        return [o for o in self.objects if o.oid in self.kept]

    def maps(self, slices: list[int], shape: tuple[int, int]) -> dict[int, np.ndarray]:
        out = {t: np.zeros(shape, dtype=np.float32) for t in slices}
        for o in self.kept_objects():
            for t, m in o.masks.items():
                if t in out:
                    out[t][m] = 1.0
        return out


def same_region(a: np.ndarray, b: np.ndarray, min_dice: float) -> bool:
    """Two masks of one structure: overlapping and of similar size (a mask inside a much larger one
    is a part inside a container, not the same region)."""
    sa, sb = float(a.sum()), float(b.sum())
    return max(sa, sb) <= 2.0 * max(min(sa, sb), 1.0) and dice(a, b) >= min_dice


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of the two masks grown by one pixel: tolerant of the one-pixel shifts that dominate the
    Dice of very small masks, equal to Dice for large ones."""
    from scipy import ndimage

    return dice(ndimage.binary_dilation(a), ndimage.binary_dilation(b))


def split_along(points_rc: np.ndarray, spacing_rc: np.ndarray, piece_mm: float) -> list[np.ndarray]:
    """A slice's point group cut into consecutive pieces of at most ``piece_mm`` along its main axis.

    Where the curve runs inside the slice plane, one group holds a long run of points; one seed box
    at the run's median covers only its middle (and a median of a bent run can lie off the
    structure). Each piece seeds, or attaches to what an earlier piece seeded, on its own."""
    if len(points_rc) < 3:
        return [points_rc]
    mm = points_rc * np.asarray(spacing_rc, dtype=float)
    centred = mm - mm.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    along = centred @ axis
    extent = float(along.max() - along.min())
    if extent <= piece_mm:
        return [points_rc]
    count = int(np.ceil(extent / piece_mm))
    edges = np.linspace(along.min(), along.max() + 1e-9, count + 1)
    index = np.clip(np.searchsorted(edges, along, side="right") - 1, 0, count - 1)
    return [points_rc[index == j] for j in range(count) if np.any(index == j)]


def _snap(box) -> tuple[float, float, float, float]:
    """A box on whole pixels: the key under which the backend caches its decode (decode and prefetch
    must snap alike, or a prefetched mask would never be found)."""
    return tuple(float(round(v)) for v in box)


def _clip_box(r0, c0, r1, c1, shape) -> tuple[float, float, float, float]:
    return (float(max(r0, 0)), float(max(c0, 0)), float(min(r1, shape[0] - 1)), float(min(c1, shape[1] - 1)))


def edge_fraction(mask: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Fraction of the box's border pixels (inside the image) that the mask covers."""
    r0, c0, r1, c1 = (int(round(v)) for v in box)
    if r1 <= r0 or c1 <= c0:
        return 1.0
    border = np.concatenate([mask[r0, c0:c1 + 1], mask[r1, c0:c1 + 1], mask[r0:r1 + 1, c0], mask[r0:r1 + 1, c1]])
    return float(border.mean())


def mask_box(mask: np.ndarray, params: TrackingParams, scale: float = 1.0) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    size = max(r1 - r0, c1 - c0) + 1
    margin = max(params.min_margin_px, params.margin_fraction * size) + (scale - 1.0) * size / 2
    return _clip_box(r0 - margin, c0 - margin, r1 + margin, c1 + margin, mask.shape)


class Tracker:
    """Builds :class:`TrackedObject` s from one run's prompts (see module docstring)."""

    def __init__(self, backend, slices_u8: dict[int, np.ndarray], prompts: SlicePrompts,
                 spacing_rc: tuple[float, float], params: TrackingParams | None = None, tick=None) -> None:
        self.backend = backend
        self.slices_u8 = slices_u8
        self.prompts = prompts
        self.spacing = np.asarray(spacing_rc, dtype=float)
        self.params = params or TrackingParams()
        self.tick = tick
        self.decodes = 0
        self._next_id = 0
        self.batching = bool(getattr(backend, "batches_decodes", False))  # CUDA: decode a slice's boxes together

    # --- SAM ----------------------------------------------------------------------------------
    def _decode(self, t: int, box: tuple[float, float, float, float]) -> tuple[np.ndarray, float]:
        """One box on one slice; boxes are snapped to whole pixels, so the same (slice, box) is decoded
        once, here and (through the backend's decode cache) in later runs."""
        box = _snap(box)
        calls = self.backend.decode_calls
        out = self.backend.decode(self.backend.embed(self.slices_u8[t]), None, box)
        self.decodes += self.backend.decode_calls - calls
        return out.mask, out.score

    def _prefetch(self, t: int, boxes: list[tuple[float, float, float, float]]) -> None:
        """Decode the boxes about to be asked for on slice t in one batched call, where the backend
        batches (CUDA); elsewhere nothing happens and each box is decoded when it is asked for."""
        if not boxes or not self.batching:
            return
        self.decodes += self.backend.prefetch_boxes(self.backend.embed(self.slices_u8[t]), [_snap(b) for b in boxes])

    def _informative(self, mask: np.ndarray, score: float, box, t: int, min_score: float | None = None) -> bool:
        """A mask is evidence only when SAM is confident, the patch has texture, and the mask is
        not simply the box filled in."""
        p = self.params
        if score < (p.min_score if min_score is None else min_score) or not mask.any():
            return False
        r0, c0, r1, c1 = (int(round(v)) for v in box)
        patch = self.slices_u8[t][r0:r1 + 1, c0:c1 + 1]
        if patch.size == 0 or float(patch.std()) < p.min_texture:
            return False
        box_area = max((r1 - r0 + 1) * (c1 - c0 + 1), 1)
        return float(mask[r0:r1 + 1, c0:c1 + 1].sum()) / box_area < p.box_fill_limit

    def seed_hypotheses(self, t: int, centre_rc: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """The masks a point may belong to, from the image, largest first (empty: no evidence).

        The main one: the smallest box size whose mask is enclosed, confident and stable; then larger
        sizes as long as their mask is enclosed, contains the current one and SAM is clearly more
        confident (a lumen inside a vessel wall, a patch inside an organ grow to the whole). When no
        size is stable, the enclosed mask SAM is surest of, which is often a container: SAM scores
        a whole liver higher than the thin vein inside it. So, with ``part_hypotheses`` (the default),
        whenever the main mask is much larger than the smallest enclosed, confident
        mask that holds the point, and covers it, that *part* is a second hypothesis. Both are
        tracked and count the seeding point; later points go to the smallest holder, so the whole
        curve decides (the vein's points stay inside the vein; a patch of an organ loses the curve's
        points within a few slices and the organ takes them)."""
        p = self.params
        if not p.extent:
            found = self._fixed_seed(t, centre_rc)
            return [found] if found is not None else []
        shape = self.slices_u8[t].shape
        r, c = centre_rc
        ri, ci = int(round(min(max(r, 0), shape[0] - 1))), int(round(min(max(c, 0), shape[1] - 1)))
        sizes = [h for h in SEED_HALF_SIZES_MM
                 if not (h / self.spacing[0] > shape[0] and h / self.spacing[1] > shape[1])]
        boxes = [_clip_box(r - h / self.spacing[0], c - h / self.spacing[1], r + h / self.spacing[0],
                           c + h / self.spacing[1], shape) for h in sizes]
        self._prefetch(t, boxes)  # all sizes in one call where that pays (CUDA); the CPU decodes lazily
        candidates: list[tuple[np.ndarray, float, float, bool]] = []

        def candidate(i: int):
            while len(candidates) <= i:
                box = boxes[len(candidates)]
                mask, score = self._decode(t, box)
                near = mask[max(ri - 1, 0): ri + 2, max(ci - 1, 0): ci + 2].any()
                ok = bool(near) and self._informative(mask, score, box, t)
                candidates.append((mask, score, edge_fraction(mask, box), ok))
            return candidates[i]

        def enclosed(i: int) -> bool:
            _, _, edge, ok = candidate(i)
            return ok and edge <= p.edge_fraction

        chosen = None
        for i in range(len(sizes) - 1):
            if not enclosed(i):
                continue
            nxt_mask, _, _, nxt_ok = candidate(i + 1)
            if not nxt_ok or dice(candidate(i)[0], nxt_mask) >= p.stable_dice:
                chosen = i  # stable, or the larger box lost the structure: keep the enclosed one
                break
        if chosen is None:  # no size is stable: the one SAM is surest of among the enclosed
            inside = [i for i in range(len(candidates)) if enclosed(i)]
            if inside:
                chosen = max(inside, key=lambda i: candidates[i][1])
            else:
                valid = [i for i in range(len(candidates)) if candidates[i][3]]
                return [candidates[max(valid, key=lambda i: candidates[i][1])][:2]] if valid else []
        mask, score, _, _ = candidate(chosen)
        for j in range(chosen + 1, min(chosen + 3, len(sizes))):  # one step to the whole structure, at most
            bigger, bigger_score, _, _ = candidate(j)
            if not enclosed(j):
                continue
            contains = np.logical_and(bigger, mask).sum() / max(mask.sum(), 1)
            if (contains >= 0.9 and bigger_score >= score + p.grow_score_margin
                    and mask.sum() < bigger.sum() <= p.grow_area_limit * mask.sum()):
                mask, score = bigger, bigger_score
                break
        if not p.part_hypotheses:
            return [(mask, score)]
        first = next(i for i in range(len(candidates)) if enclosed(i))  # smallest enclosed; chosen is one
        part, part_score, _, _ = candidates[first]
        area = float(part.sum())
        if mask.sum() > p.part_area_ratio * area and np.logical_and(mask, part).sum() >= p.part_inside * area:
            return [(mask, score), (part, part_score)]
        return [(mask, score)]

    def _fixed_seed(self, t: int, centre_rc: np.ndarray) -> tuple[np.ndarray, float] | None:
        """Ablation: the best-scoring mask of three fixed box sizes that holds the point."""
        shape = self.slices_u8[t].shape
        r, c = centre_rc
        ri, ci = int(round(min(max(r, 0), shape[0] - 1))), int(round(min(max(c, 0), shape[1] - 1)))
        best = None
        for h in FIXED_HALF_SIZES_MM:
            hr, hc = h / self.spacing[0], h / self.spacing[1]
            box = _clip_box(r - hr, c - hc, r + hr, c + hc, shape)
            mask, score = self._decode(t, box)
            if mask[ri, ci] and self._informative(mask, score, box, t) and (best is None or score > best[1]):
                best = (mask, score)
        return best

    def follow(self, t: int, previous: np.ndarray,
               reference_area: float | None = None) -> tuple[np.ndarray, float] | None:
        """The object's mask on slice t from a box around its mask on the neighbouring slice, grown
        once when it runs along the box edge; None when the gates fail."""
        p = self.params
        box = mask_box(previous, p)
        mask, score = self._decode(t, box)
        if not self._gates(t, mask, score, box, previous, reference_area):
            return None
        if p.extent and edge_fraction(mask, box) > p.edge_fraction:
            bigger_box = mask_box(mask, p, scale=1.5)
            bigger, bigger_score = self._decode(t, bigger_box)
            if (self._gates(t, bigger, bigger_score, bigger_box, previous, reference_area)
                    and bigger_score > score and edge_fraction(bigger, bigger_box) <= p.edge_fraction):
                return bigger, bigger_score
        return mask, score

    def _gates(self, t, mask, score, box, previous, reference_area: float | None = None) -> bool:
        p = self.params
        if not self._informative(mask, score, box, t, p.min_follow_score):
            return False
        area = float(mask.sum())
        if reference_area and area > p.max_growth * reference_area:
            return False
        ratio = area / max(float(previous.sum()), 1.0)
        return p.area_ratio[0] <= ratio <= p.area_ratio[1] and overlap(mask, previous) >= p.min_overlap

    # --- objects -------------------------------------------------------------------------------
    def _new(self, t: int, mask: np.ndarray, score: float) -> TrackedObject:
        o = TrackedObject(self._next_id, {t: mask}, {t: score})
        o.seeded.add(t)
        self._next_id += 1
        return o

    def _groups(self, t: int) -> list[tuple[np.ndarray, int]]:
        """(centre, number of points) of slice t's point groups; with ``seed_piece_mm`` set, a group
        that runs along the slice (the curve inside the plane) is cut into pieces of at most that."""
        groups: dict[int, list] = {}
        for pt in self.prompts.get(t, []):
            groups.setdefault(pt.group, []).append((pt.row, pt.col))
        out = []
        for rows_cols in groups.values():
            points = np.array(rows_cols, dtype=float)
            pieces = ([points] if self.params.seed_piece_mm is None
                      else split_along(points, self.spacing, self.params.seed_piece_mm))
            out.extend((np.median(piece, axis=0), len(piece)) for piece in pieces)
        return out

    def _owner(self, t: int, centre: np.ndarray, live: list[TrackedObject]) -> TrackedObject | None:
        """The live object a point belongs to: among the masks that hold it, the smallest (a point
        inside a small object nested in a large one is the small one's); failing that, the smallest
        mask within ``attach_mm`` of it. The order of ``live`` does not matter."""
        shape = self.slices_u8[t].shape
        r, c = min(max(int(round(centre[0])), 0), shape[0] - 1), min(max(int(round(centre[1])), 0), shape[1] - 1)
        reach = np.ceil(self.params.attach_mm / self.spacing).astype(int)
        best, best_key = None, None
        for o in live:
            if t not in o.masks:
                continue
            m = o.masks[t]
            holds = bool(m[r, c])
            near = m[max(r - reach[0], 0): r + reach[0] + 1, max(c - reach[1], 0): c + reach[1] + 1]
            if not holds and not near.any():
                continue
            key = (not holds, float(m.sum()), o.oid)
            if best_key is None or key < best_key:
                best, best_key = o, key
        return best

    def _assign(self, t: int, live: list[TrackedObject]) -> None:
        """Attach slice t's point groups to the live object that holds them; seed the rest. Every
        seed hypothesis becomes (or joins) an object and counts the seeding points: which of a
        container and its part the curve follows is left to the later slices, whose points go to
        the smallest holder (:meth:`_owner`). (Measured on the development split: giving the seeding
        points to the part alone lost 34 Dice points on the CT colon, where the container is the
        colon and the part a loop of it: its points were taken away and it was rejected.)"""
        for centre, n in self._groups(t):
            owner = self._owner(t, centre, live)
            owners = [owner] if owner is not None else []
            if owner is None:
                for mask, score in self.seed_hypotheses(t, centre):
                    same = next((o for o in live if t in o.masks
                                 and same_region(o.masks[t], mask, self.params.merge_dice)), None)
                    if same is None:
                        same = self._new(t, mask, score)
                        live.append(same)
                        self.objects.append(same)
                    else:
                        same.seeded.add(t)
                    owners.append(same)
            for o in owners:  # distinct: same_region needs sizes within 2x, container and part differ > 3x
                o.support[t] = o.support.get(t, 0) + n
            if len(owners) == 2:  # container and part: linked, and the part records the points they share
                container, part = owners
                container.parts.add(part.oid)
                part.shared[t] = part.shared.get(t, 0) + n

    def _merge(self, t: int, live: list[TrackedObject]) -> list[TrackedObject]:
        merged: list[TrackedObject] = []
        for o in sorted(live, key=lambda x: x.oid):
            target = next((m for m in merged if t in m.masks and t in o.masks
                           and same_region(m.masks[t], o.masks[t], self.params.merge_dice)), None)
            if target is None:
                merged.append(o)
            else:
                self._absorb(target, o)
        return merged

    def _absorb(self, into: TrackedObject, other: TrackedObject) -> None:
        """``into`` takes over ``other``; links to ``other`` as a part are redirected at the end."""
        into.absorb(other)
        self.objects.remove(other)
        self._alias[other.oid] = into.oid

    def _resolve_parts(self) -> None:
        """Part links point at the objects that absorbed the parts; an object is never its own part."""
        def final(oid: int) -> int:
            while oid in self._alias:
                oid = self._alias[oid]
            return oid

        for o in self.objects:
            o.parts = {final(p) for p in o.parts} - {o.oid}

    def _sweep(self, order: list[int], live: list[TrackedObject], extend_only: bool) -> None:
        """One pass over ``order``: follow live objects slice to slice, attach or seed point groups
        (unless ``extend_only``), merge objects that meet."""
        for i, t in enumerate(order):
            if self.tick is not None:
                self.tick(i, len(order))
            previous_slice = order[i - 1] if i else None
            if previous_slice is not None and self.batching:  # every object's first decode on t, in one call
                self._prefetch(t, [mask_box(o.masks[previous_slice], self.params) for o in live
                                   if previous_slice in o.masks and t not in o.masks])
            for o in live:
                if previous_slice is None or previous_slice not in o.masks or t in o.masks:
                    continue
                found = self.follow(t, o.masks[previous_slice], o.reference_area())
                if found is None:
                    o.active = False
                else:
                    o.masks[t], o.scores[t] = found
            live[:] = [o for o in live if o.active or t in o.masks]
            if not extend_only:
                self._assign(t, live)
            else:
                everyone = [x for x in self.objects if t in x.masks]
                met: dict[int, int] = {}
                for centre, n in self._groups(t):  # points met on the way back that it alone holds
                    owner = self._owner(t, centre, everyone)
                    if owner is not None and owner in live:
                        met[owner.oid] = met.get(owner.oid, 0) + n  # summed over the pieces of a group
                for o in live:
                    if met.get(o.oid) and o.support.get(t, 0) == 0:
                        o.support[t] = met[o.oid]
                others = [x for x in self.objects if x not in live and t in x.masks]
                for o in list(live):
                    for x in others:
                        if x in self.objects and t in o.masks and same_region(x.masks[t], o.masks[t],
                                                                              self.params.merge_dice):
                            self._absorb(x, o)
                            live.remove(o)
                            break
            live[:] = self._merge(t, live)
            for o in live:
                o.unsupported_run = 0 if o.support.get(t, 0) else o.unsupported_run + 1
                if o.unsupported_run > o.max_gap(self.params):
                    o.active = False
            live[:] = [o for o in live if o.active]

    def _measure_depths(self) -> None:
        """How deep the curve's points lie in each object's final masks (for the rim rule in select)."""
        if self.params.rim_depth is None:
            return
        for o in self.objects:
            o.depths = []
            for t in o.support_slices:
                points = [(p.row, p.col) for p in self.prompts.get(t, [])]
                if t in o.masks and points:
                    o.depths += point_depths(o.masks[t], np.array(points, dtype=float))

    def _link(self) -> None:
        """Join objects where one ends and another starts a few slices later at the same place
        (tracking lost the structure for a slice or two); the slices between take the nearer end's
        mask, for SAM to re-decode."""
        changed = True
        while changed:
            changed = False
            for a in sorted(self.objects, key=lambda o: max(o.masks)):
                end = max(a.masks)
                for b in self.objects:
                    if b is a or min(b.masks) <= end or min(b.masks) - end > self.params.link_gap_slices + 1:
                        continue
                    start = min(b.masks)
                    ma, mb = a.masks[end], b.masks[start]
                    distance = np.linalg.norm(_centroid(ma) - _centroid(mb))
                    reach = 2.0 * max(_radius(ma), _radius(mb)) + (start - end)
                    if distance > reach or not 0.4 < mb.sum() / max(ma.sum(), 1) < 2.5:
                        continue
                    for t in range(end + 1, start):
                        a.masks[t] = ma if t - end <= start - t else mb
                        a.scores[t] = 0.0
                    self._absorb(a, b)
                    changed = True
                    break
                if changed:
                    break

    def run(self, slices: list[int]) -> TrackingResult:
        self.objects: list[TrackedObject] = []
        self._alias: dict[int, int] = {}
        order = sorted(slices)
        self._sweep(order, [], extend_only=False)
        # objects that start late are followed back towards the first slice; a container counts the
        # points its parts took (an aorta whose lumen specks hold its points is still the aorta)
        self._resolve_parts()
        by_id = {o.oid: o for o in self.objects}
        pooled = {o.oid: _pooled_support(o, by_id) for o in self.objects}
        for o in sorted(self.objects, key=lambda x: (-pooled[x.oid], x.oid)):
            if o not in self.objects or pooled[o.oid] < self.params.min_support_points:
                continue
            first = min(o.masks)
            back = [t for t in reversed(order) if t <= first]
            if len(back) > 1:
                o.active, o.unsupported_run = True, 0
                self._sweep(back, [o], extend_only=True)
        self._link()
        self._resolve_parts()
        self._measure_depths()
        kept, reasons = select(self.objects, self.params)
        return TrackingResult(self.objects, kept, reasons, self.decodes)


def point_depths(mask: np.ndarray, points_rc: np.ndarray) -> list[float]:
    """Depth of each point inside ``mask``: its distance to the background over the mask's largest
    such distance (1 in the middle, near 0 on the rim). Points outside the mask are skipped."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return []
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = np.pad(mask[r0:r1, c0:c1], 1)  # the mask's box only: cheap even for a large organ
    distance = ndimage.distance_transform_edt(crop)
    peak = float(distance.max())
    out = []
    for r, c in np.round(points_rc).astype(int):
        if r0 <= r < r1 and c0 <= c < c1 and mask[r, c]:
            out.append(float(distance[r - r0 + 1, c - c0 + 1]) / peak)
    return out


def _contains(o: TrackedObject, target: TrackedObject, fraction: float = 0.5) -> bool:
    """``o`` is a larger region around the target (a leak or a box-filling blob), not a part of it."""
    shared = [t for t in o.masks if t in target.masks]
    if not shared:
        return False
    inside = [np.logical_and(o.masks[t], target.masks[t]).sum() / max(target.masks[t].sum(), 1) for t in shared]
    return float(np.median(inside)) >= fraction and float(np.median([o.masks[t].sum() for t in shared])) > \
        1.5 * float(np.median([target.masks[t].sum() for t in shared]))


def _median_area(o: TrackedObject) -> float:
    return float(np.median([m.sum() for m in o.masks.values()]))


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(0)


def _radius(mask: np.ndarray) -> float:
    return float(np.sqrt(mask.sum() / np.pi))


def _is_excursion(o: TrackedObject, target: TrackedObject) -> bool:
    """``o``'s points take over from the target's on a stretch that the target's points bracket on
    both sides, and the target continues through the stretch: a drift, whatever its length."""
    own = o.support_slices
    if not own:
        return False
    a, b = own[0], own[-1]
    target_support = target.support_slices
    before = [t for t in target_support if t < a]
    after = [t for t in target_support if t > b]
    if not before or not after:
        return False
    inside = [t for t in target_support if a <= t <= b]
    if len(inside) > 0.5 * len(own):
        return False  # both supported on the same slices: a second crossing, not a drift
    span = range(a, b + 1)
    through = sum(t in target.masks for t in span) / len(span)
    return through >= 0.6


def _pooled_support(o: TrackedObject, by_id: dict[int, TrackedObject]) -> int:
    """A container's points together with those of the parts seeded with it (shared seeding points
    once): the parts of a structure split its points among themselves (small masks inside an aortic
    lumen take the later points, as the smallest holders), and a drift must not win because of it."""
    parts = [by_id[p] for p in o.parts if p in by_id]
    return o.total_support + sum(p.total_support - p.shared_total for p in parts)


def _with_parts_support(target: TrackedObject, by_id: dict[int, TrackedObject]) -> TrackedObject:
    """The object with its parts' points added to its own (for the excursion test)."""
    family = TrackedObject(target.oid, target.masks, target.scores, dict(target.support))
    for p in target.parts:
        if p in by_id:
            for t, n in by_id[p].support.items():
                family.support[t] = family.support.get(t, 0) + n
    return family


def _best_member(head: TrackedObject, by_id: dict[int, TrackedObject], params: TrackingParams) -> TrackedObject:
    """The best-supported of an object and the parts seeded with it. The seeding points that a part
    shares with its container count for the part only: otherwise the container wins every tie. A
    part needs points of its own on ``part_min_slices`` slices besides those it was seeded on: a
    curve of two clicks in the middle of an aorta says nothing about the lumen inside it. A container
    whose points lie along its rim is no candidate while a part with points is: the curve runs
    through the part, beside the container."""
    supported = [by_id[p] for p in head.parts if p in by_id and by_id[p].total_support > 0]
    through = [p for p in supported if p.centred(params) and set(p.support_slices) - p.seeded]
    if head.on_rim(params) and through:  # points of its own beyond its seeding slices, in its middle
        return min(through, key=lambda p: (-p.total_support, p.oid))
    parts = [p for p in supported if len(set(p.support_slices) - p.seeded) >= params.part_min_slices]
    own = head.total_support - sum(p.shared_total for p in parts)
    return min([(own, head), *((p.total_support, p) for p in parts)], key=lambda x: (-x[0], x[1].oid))[1]


def _own_support(o: TrackedObject, target: TrackedObject) -> int:
    """``o``'s points less the seeding points it shares with the target (when the target is its part)."""
    return o.total_support - (target.shared_total if target.oid in o.parts else 0)


def select(objects: list[TrackedObject], params: TrackingParams) -> tuple[list[int], dict[int, str]]:
    """The target, and the other objects kept with it.

    The target comes from the best family: an object with the parts seeded with it, ranked by their
    pooled points. Within it, the best-supported member is the target: the part where the curve
    follows the part (a vein inside the liver), the container where the parts are fragments (specks
    inside an aortic lumen). Without part hypotheses every family is one object."""
    if not objects:
        return [], {}
    by_id = {o.oid: o for o in objects}
    pooled = {o.oid: _pooled_support(o, by_id) for o in objects}
    inside = {p for o in objects for p in o.parts}

    def off_curve(o: TrackedObject) -> bool:  # the whole family lies beside the curve
        return o.on_rim(params) and all(by_id[p].on_rim(params) for p in o.parts if p in by_id)

    def on_curve(o: TrackedObject) -> bool:  # the curve runs through the family: positive evidence
        return o.centred(params) or any(by_id[p].centred(params) for p in o.parts if p in by_id)

    # a family wholly beside the curve gives way to one the curve runs through, if that one has at
    # least half its points (a speck with a point or two, about which nothing is known, does not count)
    through = [pooled[o.oid] for o in objects if on_curve(o)]

    def beside(o: TrackedObject) -> bool:
        return off_curve(o) and any(n >= 0.5 * pooled[o.oid] for n in through)

    head = min(objects, key=lambda o: (beside(o), -pooled[o.oid], o.oid in inside, -o.total_support, o.oid))
    target = _best_member(head, by_id, params)
    # the best-supported family's target can itself be a drift: its points take over on a stretch that
    # another family's points bracket on both sides while that family continues through it. Then the
    # other is the structure (when it has at least half the points: a drift never outnumbers it by more).
    members = {head.oid} | head.parts
    around = [o for o in objects if o.oid not in members and pooled[o.oid] >= 0.5 * pooled[head.oid]
              and (not beside(o) or beside(head))
              and _is_excursion(target, _with_parts_support(o, by_id))
              and not _is_excursion(o, _with_parts_support(target, by_id))]
    if around:
        head = min(around, key=lambda o: (-pooled[o.oid], o.oid))
        target = _best_member(head, by_id, params)
    ranked = [target] + sorted((o for o in objects if o is not target), key=lambda o: (-o.total_support, o.oid))
    kept, reasons = [target.oid], {target.oid: f"target: {target.total_support} points"}
    if target.total_support == 0:
        return [], {target.oid: "no points inside any object"}
    if head is not target or target.parts:
        reasons[target.oid] += f" ({pooled[head.oid]} with the parts seeded with it)"
    if around:
        reasons[target.oid] += "; the better-supported family was a drift excursion from it"
    floor = max(params.min_support_points, params.min_support_fraction * target.total_support)
    family = _with_parts_support(target, by_id)
    for o in ranked[1:]:
        if pooled[o.oid] < floor:
            reasons[o.oid] = f"rejected: {pooled[o.oid]} points with its parts, fewer than {floor:.0f}"
        elif o.on_rim(params) and _median_area(o) > params.part_area_ratio * _median_area(target):
            reasons[o.oid] = (f"rejected: its {o.total_support} points lie along its rim (median depth "
                              f"{o.median_depth(params):.2f}): a larger neighbour the curve runs beside")
        elif _is_excursion(o, family):
            reasons[o.oid] = f"rejected: a drift excursion from the target ({o.total_support} points)"
        elif _contains(o, target) and _own_support(o, target) < 0.5 * target.total_support:
            reasons[o.oid] = f"rejected: a larger region around the target ({o.total_support} points)"
        else:
            kept.append(o.oid)
            reasons[o.oid] = f"kept: {o.total_support} points, another part of the target"
    return kept, reasons
