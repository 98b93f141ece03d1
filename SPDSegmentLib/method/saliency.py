"""Saliency priors: where, on each slice, the target structure plausibly is (a map in [0, 1]).

Two implementations share one contract so CPD never needs to know which one it got:

* :class:`TrainedSaliencyPrior` - the paper's stage 1: a light head on SAM image embeddings,
  trained per structure (``train-prior``), stored with the identity of the SAM checkpoint it saw.
* :class:`SamVotePrior` (default training-free prior) - SAM's own masks, voted across slices. For
  slice t, the points of slices t-w..t+w are carried to t at their in-plane positions and merged
  into clusters (``merge_mm``); each cluster gives one box-prompted SAM mask decoded on slice t,
  the box scale chosen among a few sizes by SAM's own predicted IoU (so the size comes from the
  image, not a constant). A pixel's saliency is the fraction of the window's slices (those with
  points) whose clusters' masks cover it. The true structure is covered from most slices; a drift
  stretch or a distractor only from its own few. (Measured alternative: voting masks decoded on
  each point's own slice was 3x cheaper but 4 Dice points worse on the demo: neighbours' masks
  do not line up on slice t.)
* :class:`AppearanceTrackPrior` - training-free and SAM-free (cheap), for homogeneous structures:
    1. *Appearance.* The target's intensity is estimated robustly from the centerline itself: the
       median of the (3x3-median) intensities at all prompt points, spread = 1.4826 * MAD. Most
       points lie on the target, so drifted points do not move the median. Each pixel gets a
       Gaussian likelihood ``A = exp(-z^2 / 2)``, ``z = (I - mu) / (k * sigma)``.
    2. *Track votes.* On slice t the connected regions of ``A > 0.5`` are scored by how many of the
       2w+1 slices around t (those that have points) put a point inside them, at the same in-plane
       position. The true structure is hit by the points of most nearby slices; a stretch of
       drift lands on a neighbour only for a few slices, so the neighbour's region scores low.
    3. *Locality.* The score fades with distance from the voting points (Gaussian, scale = twice the
       structure's radius as measured from the regions the points hit), so a region that leaks
       into a large organ stays salient only near the track.
  ``S = A * vote_fraction * locality``. Limits: a drift stretch longer than w slices, or onto tissue
  of the same intensity that stays there, outvotes the truth; measured in the demo and evaluation.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import ndimage

from ..volume import Volume
from .appearance_gate import AppearanceGate, gate_maps, point_intensity_model
from .prompts import SlicePrompts

log = logging.getLogger(__name__)


@dataclass
class PriorInputs:
    """What a prior may look at: the volume (slice view), its 8-bit slices, the raw prompts, SAM."""

    volume: Volume
    slices_u8: dict[int, np.ndarray]  # only the slices the run processes
    prompts: SlicePrompts
    backend: object | None = None  # SamBackend, for embedding-based priors
    intensity_preset: str = "auto"
    on_slice: object | None = None  # called with (done, total) after each slice: progress and cancel

    def tick(self, done: int, total: int) -> None:
        if self.on_slice is not None:
            self.on_slice(done, total)


class SaliencyPrior(Protocol):
    name: str
    default_tau: float
    embeds: str  # slices whose SAM embeddings it reads: "none", "prompted" (with points) or "all"

    def compute(self, inputs: PriorInputs, slice_indices: list[int]) -> dict[int, np.ndarray]:
        """One float32 map in [0, 1] per requested slice, shaped like the slice."""


# --- training-free -------------------------------------------------------------------------------
@dataclass
class AppearanceTrackPrior:
    """Training-free prior from robust intensity statistics and cross-slice agreement of the points."""

    window: int = 4
    spread: float = 2.0
    min_sigma_fraction: float = 0.03  # of the volume's robust intensity range
    smoothing_px: float = 0.75
    name: str = "intensity"
    default_tau: float = 0.5
    embeds: str = "none"
    training_free: bool = True
    stats: dict = field(default_factory=dict)

    def compute(self, inputs: PriorInputs, slice_indices: list[int]) -> dict[int, np.ndarray]:
        if not inputs.prompts:
            raise ValueError("the training-free prior needs at least one prompt point")
        slices = inputs.volume.slices()
        mu, sigma = point_intensity_model(slices, inputs.prompts, self.min_sigma_fraction)
        spacing = np.asarray(inputs.volume.in_plane_spacing)
        appearance: dict[int, np.ndarray] = {}
        labels: dict[int, np.ndarray] = {}
        needed = sorted({k for t in slice_indices for k in range(t - self.window, t + self.window + 1)
                         if 0 <= k < len(slices)} | set(slice_indices))
        for t in needed:
            img = ndimage.gaussian_filter(slices[t].astype(np.float32), self.smoothing_px)
            z = (img - mu) / (self.spread * sigma)
            appearance[t] = np.exp(-0.5 * z * z).astype(np.float32)
            labels[t], _ = ndimage.label(appearance[t] > 0.5)

        # radius of the structure: median inscribed distance of the points in their regions
        radii = []
        for s, points in inputs.prompts.items():
            if s in labels:
                inside = ndimage.distance_transform_edt(labels[s] > 0, sampling=spacing)
                radii.extend(float(inside[p.pixel]) for p in points if inside[p.pixel] > 0)
        radius_mm = float(np.clip(np.median(radii), 2.0, 40.0)) if radii else 10.0
        self.stats = {"mu": mu, "sigma": sigma, "radius_mm": radius_mm}

        out: dict[int, np.ndarray] = {}
        for t in slice_indices:
            lab_t = labels[t]
            window = [k for k in range(t - self.window, t + self.window + 1) if k in inputs.prompts]
            score = np.zeros(lab_t.max() + 1, dtype=np.float32)
            seeds = np.zeros(lab_t.shape, dtype=bool)
            for k in window:
                hit = set()
                for p in inputs.prompts[k]:
                    lab = lab_t[p.pixel]
                    if lab:
                        hit.add(lab)
                        seeds[p.pixel] = True
                for lab in hit:
                    score[lab] += 1.0
            if window:
                score /= len(window)
            score[0] = 0.0
            if seeds.any():
                dist_mm = ndimage.distance_transform_edt(~seeds, sampling=spacing)
                locality = np.exp(-0.5 * (dist_mm / (2.0 * radius_mm)) ** 2)
            else:
                locality = np.zeros(lab_t.shape)
            out[t] = np.clip(appearance[t] * score[lab_t] * locality, 0, 1).astype(np.float32)
        return out


@dataclass
class SamVotePrior:
    """Training-free prior from cross-slice agreement of SAM masks (see module docstring)."""

    window: int = 4
    half_sizes_mm: tuple[float, ...] = (6.0, 12.0, 24.0)
    merge_mm: float = 5.0
    name: str = "sam-votes"
    default_tau: float = 0.5
    embeds: str = "all"
    training_free: bool = True
    stats: dict = field(default_factory=dict)

    def _best_masks(self, backend, emb, centres: np.ndarray, shape, spacing) -> np.ndarray:
        """Per centre, the mask (over all box scales) that SAM scores best and that holds the centre."""
        boxes = []
        for r, c in centres:
            for h in self.half_sizes_mm:
                hr, hc = h / spacing[0], h / spacing[1]
                boxes.append((max(r - hr, 0), max(c - hc, 0), min(r + hr, shape[0] - 1), min(c + hc, shape[1] - 1)))
        masks, scores = backend.decode_boxes(emb, np.array(boxes))
        masks = masks.reshape(len(centres), len(self.half_sizes_mm), *shape)
        scores = scores.reshape(len(centres), len(self.half_sizes_mm))
        out = np.zeros((len(centres), *shape), dtype=bool)
        for i, (r, c) in enumerate(centres):
            ri, ci = min(max(int(round(r)), 0), shape[0] - 1), min(max(int(round(c)), 0), shape[1] - 1)
            valid = masks[i, :, ri, ci]
            if valid.any():
                out[i] = masks[i, int(np.argmax(np.where(valid, scores[i], -np.inf)))]
        return out

    def compute(self, inputs: PriorInputs, slice_indices: list[int]) -> dict[int, np.ndarray]:
        backend = inputs.backend
        if backend is None:
            raise ValueError("the sam-votes prior needs a SAM backend")
        spacing = np.asarray(inputs.volume.in_plane_spacing)
        shape = inputs.volume.slice_shape
        self.stats = {"decodes": 0}
        out: dict[int, np.ndarray] = {}
        for i, t in enumerate(slice_indices):
            inputs.tick(i, len(slice_indices))
            window = [k for k in range(t - self.window, t + self.window + 1) if k in inputs.prompts]
            if not window:
                out[t] = np.zeros(shape, dtype=np.float32)
                continue
            clusters: list[tuple[np.ndarray, set[int]]] = []  # (centre, source slices)
            for k in window:
                for p in inputs.prompts[k]:
                    pos = np.array([p.row, p.col])
                    for centre, sources in clusters:
                        if np.linalg.norm((centre - pos) * spacing) <= self.merge_mm:
                            sources.add(k)
                            break
                    else:
                        clusters.append((pos, {k}))
            emb = backend.embed(inputs.slices_u8[t])
            masks = self._best_masks(backend, emb, np.array([c for c, _ in clusters]), shape, spacing)
            self.stats["decodes"] += len(clusters) * len(self.half_sizes_mm)
            covered = {k: np.zeros(shape, dtype=bool) for k in window}
            for mask, (_, sources) in zip(masks, clusters):
                for k in sources:
                    covered[k] |= mask
            out[t] = np.mean(list(covered.values()), axis=0).astype(np.float32)
        return out


@dataclass
class TrackPrior:
    """Training-free prior from 3-D continuity (:mod:`~SPDSegmentLib.method.continuity`): the SAM
    objects that the curve's points support, followed slice to slice through gaps and drift, with
    drift excursions rejected whatever their length. 1 on the kept objects, 0 elsewhere, then, on
    volumes windowed as MRI, trimmed by the appearance gate
    (:mod:`~SPDSegmentLib.method.appearance_gate`) to the tissue that looks like the points: there
    SAM's masks run into the fat and organs beside small structures. On CT the gate is off by default:
    the masks already follow the calibrated contrast, and trimming cost the structures whose content
    varies beside the curve (colon air, a dissected aorta's false lumen). ``gate_presets=None`` gates
    every volume (``sam-track-gated``), ``gate=None`` none (``sam-track-ungated``)."""

    name: str = "sam-track"
    default_tau: float = 0.5
    embeds: str = "all"
    training_free: bool = True
    params: object = None  # continuity.TrackingParams; None: the defaults
    gate: AppearanceGate | None = field(default_factory=AppearanceGate)
    gate_presets: tuple[str, ...] | None = ("mri",)  # window presets the gate applies to; None: all
    stats: dict = field(default_factory=dict)
    last: object = None  # the last continuity.TrackingResult, for audit and figures

    def gates(self, preset: str) -> bool:
        """Whether the appearance gate trims a run windowed with ``preset`` (the resolved one)."""
        return self.gate is not None and (self.gate_presets is None or preset in self.gate_presets)

    def compute(self, inputs: PriorInputs, slice_indices: list[int]) -> dict[int, np.ndarray]:
        from .continuity import Tracker

        if inputs.backend is None:
            raise ValueError("the sam-track prior needs a SAM backend")
        tracker = Tracker(inputs.backend, inputs.slices_u8, inputs.prompts, inputs.volume.in_plane_spacing,
                          self.params, tick=inputs.tick)
        result = tracker.run(list(slice_indices))
        self.last = result
        self.stats = {"decodes": result.decodes, "objects": len(result.objects), "kept": len(result.kept),
                      "reasons": dict(result.reasons)}
        maps = result.maps(list(slice_indices), inputs.volume.slice_shape)
        preset = inputs.intensity_preset
        if preset == "auto":  # the pipeline passes the resolved window; another caller may not
            from .windowing import volume_window

            preset = volume_window(inputs.volume, "auto").preset
        if self.gates(preset):
            maps, self.stats["appearance_gate"] = gate_maps(maps, inputs.volume.slices(), inputs.prompts, self.gate)
        return maps


# --- trained head ----------------------------------------------------------------------------------
PRIOR_FORMAT = "spdsegment-saliency-prior"
PRIOR_FORMAT_VERSION = 2  # 2: may carry LoRA encoder adapters; files without them are written as 1


def build_saliency_head(embed_dim: int = 256, hidden: int = 64):
    """The stage-1 head: a small conv net on the 256x64x64 SAM embedding -> one logit map (64x64,
    upsampled to the slice). Light by design: it locates, SAM delineates."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(embed_dim, hidden, 1), nn.GroupNorm(8, hidden), nn.GELU(),
        nn.Conv2d(hidden, hidden, 3, padding=1), nn.GroupNorm(8, hidden), nn.GELU(),
        nn.Conv2d(hidden, hidden, 3, padding=1), nn.GroupNorm(8, hidden), nn.GELU(),
        nn.Conv2d(hidden, 1, 1),
    )


def head_logits_to_slice(logits, input_size: tuple[int, int], original_size: tuple[int, int], img_size: int):
    """64x64 logits -> slice-sized logits, undoing SamPredictor's resize-and-pad."""
    import torch.nn.functional as F

    x = F.interpolate(logits, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, size=original_size, mode="bilinear", align_corners=False)


class PriorFileError(ValueError):
    pass


@dataclass
class TrainedSaliencyPrior:
    """The stage-1 head loaded from a ``prior.pt`` file made by ``train-prior``."""

    head: object
    metadata: dict
    name: str = "trained"
    embeds: str = "all"
    training_free: bool = False
    encoder: object = None  # a LoRA-adapted copy of the SAM image encoder, when trained with --lora-rank

    def __post_init__(self) -> None:
        if self.encoder is not None:
            self.embeds = "none"  # it embeds with its own encoder; SAM's embeddings are made when decoding

    @property
    def default_tau(self) -> float:
        return float(self.metadata.get("suggested_tau", 0.5))

    @classmethod
    def load(cls, path: str | Path, backend=None) -> TrainedSaliencyPrior:
        from ..sam.model_files import read_model_file

        meta, data = read_model_file(path, PRIOR_FORMAT, "saliency prior", PriorFileError)
        if data.get("format_version", 0) > PRIOR_FORMAT_VERSION:
            raise PriorFileError(f"{path} was written by a newer SPDSegment (format "
                                 f"{data['format_version']}); update SPDSegment")
        if backend is not None and meta.get("checkpoint_sha256") != backend.checkpoint_sha256:
            raise PriorFileError(
                f"{path} was trained on embeddings of SAM checkpoint {meta.get('backend')} "
                f"(sha256 {str(meta.get('checkpoint_sha256'))[:12]}...), but the selected model is "
                f"{backend.name} (sha256 {backend.checkpoint_sha256[:12]}...). Use the same model, or "
                "retrain the prior for this one.")
        head = build_saliency_head(meta.get("embed_dim", 256), meta.get("hidden", 64))
        head.load_state_dict(data["state_dict"], strict=True)
        head.eval()
        encoder = None
        if meta.get("lora_rank"):
            if backend is None:
                raise PriorFileError(f"{path} adapts the SAM encoder (LoRA): load it with the SAM backend")
            from ..sam.lora import adapted_encoder

            encoder = adapted_encoder(backend.sam, meta["lora_rank"], meta["lora_alpha"],
                                      data.get("lora_state_dict")).to(backend.device)
        return cls(head, meta, encoder=encoder)

    def save(self, path: str | Path) -> Path:
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": PRIOR_FORMAT, "format_version": PRIOR_FORMAT_VERSION if self.encoder is not None else 1,
                "metadata": json.dumps(self.metadata), "state_dict": self.head.state_dict()}
        if self.encoder is not None:
            from ..sam.lora import lora_state

            data["lora_state_dict"] = lora_state(self.encoder)
        torch.save(data, str(path))
        return path

    def features(self, backend, slice_u8: np.ndarray):
        """(features, input_size, original_size) of one slice: the adapted encoder's when there is
        one, else SAM's cached embedding."""
        if self.encoder is None:
            emb = backend.embed(slice_u8)
            return emb.features.to(backend.device), emb.input_size, emb.original_size
        x, original_size, input_size = backend.encoder_input(slice_u8)
        return self.encoder(x), input_size, original_size

    def compute(self, inputs: PriorInputs, slice_indices: list[int]) -> dict[int, np.ndarray]:
        import torch

        backend = inputs.backend
        if backend is None:
            raise ValueError("the trained prior needs the SAM backend's embeddings")
        if self.metadata.get("checkpoint_sha256") != backend.checkpoint_sha256:
            raise PriorFileError("this prior was trained for another SAM checkpoint; see TrainedSaliencyPrior.load")
        preset = self.metadata.get("intensity_preset") or []
        presets = [preset] if isinstance(preset, str) else list(preset)  # train-prior writes a list
        if presets and inputs.intensity_preset not in (*presets, "auto"):
            log.warning("prior trained with intensity preset(s) %s, this run uses %s: expect a weaker prior",
                        ", ".join(presets), inputs.intensity_preset)
        out = {}
        self.head.to(backend.device)
        with torch.inference_mode():
            for i, t in enumerate(slice_indices):
                inputs.tick(i, len(slice_indices))
                features, input_size, original_size = self.features(backend, inputs.slices_u8[t])
                logits = self.head(features)
                full = head_logits_to_slice(logits, input_size, original_size, backend.input_size)
                out[t] = torch.sigmoid(full)[0, 0].float().cpu().numpy()
        return out


SHIPPED_PRIOR_DIR = Path(__file__).resolve().parents[1] / "models"


def shipped_priors() -> dict[str, Path]:
    """Trained priors that ship with SPDSegment, by name: ``models/<structure>_prior.pt`` ->
    ``"trained-<structure>"`` (how each was made: the ``.json`` beside it and the README)."""
    return {f"trained-{p.name[: -len('_prior.pt')]}": p for p in sorted(SHIPPED_PRIOR_DIR.glob("*_prior.pt"))}


def load_prior(spec: str | None, backend=None) -> SaliencyPrior:
    """``None`` / ``"sam-track"`` -> :class:`TrackPrior` (the default: its appearance gate on MRI only;
    ``"sam-track-gated"``: on every volume, ``"sam-track-ungated"``: on none); ``"sam-votes"`` -> :class:`SamVotePrior`;
    ``"intensity"`` -> :class:`AppearanceTrackPrior`;
    ``"trained-<structure>"`` -> a shipped trained prior; anything else is a path to a prior.pt file."""
    if spec in (None, "", "sam-track", "training-free"):
        return TrackPrior()
    if spec == "sam-track-gated":
        return TrackPrior(name="sam-track-gated", gate_presets=None)
    if spec == "sam-track-ungated":
        return TrackPrior(name="sam-track-ungated", gate=None)
    if spec == "sam-votes":
        return SamVotePrior()
    if spec == "intensity":
        return AppearanceTrackPrior()
    shipped = shipped_priors()
    if spec in shipped:
        return TrainedSaliencyPrior.load(shipped[spec], backend)
    if str(spec).startswith("trained-") and not Path(spec).exists():
        raise PriorFileError(f"no shipped prior named {spec!r}; shipped: {', '.join(shipped) or 'none'}")
    return TrainedSaliencyPrior.load(spec, backend)
