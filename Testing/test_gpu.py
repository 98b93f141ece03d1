"""The CUDA path on a real CT slice: batched autocast encoding agrees with one-slice encoding, fp16
embeddings are cached apart from fp32 ones, and fp16 masks agree with fp32 masks. Skipped without a
GPU (CI has none); run on a CUDA machine. There ``SPDSEGMENT_GPU_BUNDLE`` may name the bundle that
``benchmarks/bench_gpu.py --prepare`` writes, for a machine without SimpleITK."""
from __future__ import annotations

import os

import numpy as np
import pytest

from SPDSegmentLib.sam.embedding_cache import EmbeddingCache

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cta_and_curve():
    """The demo CTA and a curve through its aorta: the bundle's noisy curve, or the label's skeleton."""
    from SPDSegmentLib.method.prompts import Centerline
    from SPDSegmentLib.volume import Volume

    bundle = os.environ.get("SPDSEGMENT_GPU_BUNDLE")
    if bundle:
        data = np.load(bundle)
        volume = Volume(data["array"], data["ijk_to_ras"], "cta", "CT")
        return volume, Centerline(data["points"], ordered=bool(data["ordered"]), name="bundle")
    from SPDSegmentLib.evaluation import sample_data
    from SPDSegmentLib.evaluation.skeleton import centerline_from_label
    from SPDSegmentLib.io import read_label, read_volume

    volume = read_volume(sample_data.path("cta/image.nii.gz"), "cta")
    return volume, centerline_from_label(volume, read_label(sample_data.path("cta/aorta.nii.gz"), volume))


@pytest.fixture(scope="module")
def cta_and_curve():
    return _cta_and_curve()


@pytest.fixture(scope="module")
def slices(cta_and_curve):
    from SPDSegmentLib.method.windowing import volume_window

    volume, _ = cta_and_curve
    window = volume_window(volume, "ct-angio")
    return [window.apply(volume.slices()[t]) for t in (70, 90)]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if a.sum() + b.sum() == 0 else 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_autocast_embeddings_are_consistent_and_cached_apart(slices, monkeypatch):
    from SPDSegmentLib.sam.backend import load_backend

    monkeypatch.setenv("SPDSEGMENT_AUTOCAST", "fp16")
    half = load_backend("litemedsam", device="cuda")
    assert half.precision == "fp16"
    batched = half.embed_many(slices, batch_size=1)
    half.cache = EmbeddingCache()
    single = [half.embed(s) for s in slices]
    for a, b in zip(batched, single):  # embed() and embed_many() compute in the same precision
        assert float((a.features - b.features).abs().max()) < 1e-3 * float(a.features.abs().max())
    key_half = half._key(slices[0])
    monkeypatch.setenv("SPDSEGMENT_AUTOCAST", "off")
    assert half.precision == "fp32" and half._key(slices[0]) != key_half
    assert half.cache.get(half._key(slices[0])) is None  # the fp16 embedding is not served to fp32
    full = half.embed(slices[0])  # fp32: measurably different, so the check above can fail
    assert float((full.features - single[0].features).abs().max()) > 1e-4 * float(full.features.abs().max())


def test_fp16_masks_agree_with_fp32(slices, monkeypatch):
    from SPDSegmentLib.sam.backend import load_backend

    h, w = slices[0].shape
    boxes = np.array([[h * 0.3, w * 0.3, h * 0.6, w * 0.6], [h * 0.4, w * 0.45, h * 0.55, w * 0.6]])
    masks = {}
    for mode in ("off", "fp16"):
        monkeypatch.setenv("SPDSEGMENT_AUTOCAST", mode)
        backend = load_backend("litemedsam", device="cuda")
        masks[mode] = [backend.decode_boxes(e, boxes)[0] for e in backend.embed_many(slices)]
    for a, b in zip(masks["off"], masks["fp16"]):
        for x, y in zip(a, b):
            assert x.any() and _dice(x, y) > 0.97


def test_the_tracker_batches_a_slices_decodes_on_cuda_with_the_same_prior(cta_and_curve, monkeypatch):
    """On CUDA the tracker decodes the boxes of a slice's objects, and a point group's seed sizes, in
    one call. The prior's maps agree with those of one-by-one decodes (a batched product may round a
    border pixel differently, so Dice, not identity)."""
    from SPDSegmentLib.method.pipeline import SegmentParams, segment
    from SPDSegmentLib.method.saliency import load_prior
    from SPDSegmentLib.sam.backend import SamBackend, load_backend

    volume, curve = cta_and_curve
    backend = load_backend("litemedsam", device="cuda")
    assert backend.batches_decodes
    batches = []
    decode_boxes = SamBackend.decode_boxes

    def recording(self, emb, boxes_rc):
        batches.append(len(boxes_rc))
        return decode_boxes(self, emb, boxes_rc)

    def prior_union() -> np.ndarray:
        backend.decoded.clear()
        result = segment(volume, curve, backend, load_prior("sam-track", backend),
                         SegmentParams(intensity_preset="ct-angio"))
        return np.stack([result.saliency_maps[t] > 0.5 for t in sorted(result.saliency_maps)])

    monkeypatch.setattr(SamBackend, "decode_boxes", recording)
    batched = prior_union()
    assert batches and max(batches) > 1
    backend.batch_decodes = False
    count = len(batches)
    single = prior_union()
    assert len(batches) == count, "without batching the tracker decodes box by box"
    assert batched.any() and _dice(batched, single) > 0.99
