"""The fast paths give the same results as the plain ones: the ONNX Runtime encoder and decoder, the
decode cache behind re-runs after an edit, and segment-batch on Dask (timings are printed by
benchmarks/, never asserted here)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from _helpers import crop_slices

from SPDSegmentLib.evaluation.noise import simulate
from SPDSegmentLib.io import write_centerline, write_volume
from SPDSegmentLib.method.pipeline import SegmentParams, segment
from SPDSegmentLib.method.prompts import Centerline
from SPDSegmentLib.method.saliency import load_prior
from SPDSegmentLib.method.windowing import volume_window
from SPDSegmentLib.sam.backend import load_backend


@pytest.fixture(scope="module")
def torch_and_onnx():
    return load_backend("litemedsam", device="cpu", runtime="torch"), load_backend("litemedsam", device="cpu",
                                                                                     runtime="onnx")


def test_onnx_encoder_matches_torch_embedding_and_masks(cta, torch_and_onnx):
    volume, label = cta
    torch_backend, onnx_backend = torch_and_onnx
    assert torch_backend.runtime == "torch" and onnx_backend.runtime == "onnx"
    slice_u8 = volume_window(volume, "ct-angio").apply(volume.slices()[70])
    a, b = torch_backend.embed(slice_u8), onnx_backend.embed(slice_u8)
    assert float((a.features - b.features).abs().max()) < 1e-4
    rows, cols = np.nonzero(volume.with_array(label).slices()[70])
    box = (rows.min() - 5.0, cols.min() - 5.0, rows.max() + 5.0, cols.max() + 5.0)
    assert np.array_equal(torch_backend.decode(a, None, box).mask, onnx_backend.decode(b, None, box).mask)


def test_the_predictor_switches_slices_between_decodes_in_torch(cta, torch_and_onnx):
    """The torch path (the GPU's) hands each embedding to SAM's predictor before decoding. Decoding
    slice A, then B, then A again must give what a fresh backend gives for each: a stale embedding
    must never be decoded."""
    volume, label = cta
    torch_backend, _ = torch_and_onnx
    window = volume_window(volume, "ct-angio")
    boxes = {t: _label_boxes(volume, label, t)[0] for t in (60, 90)}
    embs = {t: torch_backend.embed(window.apply(volume.slices()[t])) for t in (60, 90)}
    fresh = load_backend("litemedsam", device="cpu", runtime="torch")
    expected = {t: fresh.decode(fresh.embed(window.apply(volume.slices()[t])), None, boxes[t]).mask for t in (60, 90)}
    assert not np.array_equal(expected[60], expected[90])
    for t in (60, 90, 60):
        torch_backend.decoded.clear()
        assert np.array_equal(torch_backend.decode(embs[t], None, boxes[t]).mask, expected[t]), t


def _label_boxes(volume, label, t: int) -> list[tuple[float, float, float, float]]:
    """Boxes on slice t from tight to loose around the label, and off-centre: the prior's kind of boxes."""
    rows, cols = np.nonzero(volume.with_array(label).slices()[t])
    r0, c0, r1, c1 = rows.min(), cols.min(), rows.max(), cols.max()
    h, w = volume.slice_shape
    out = []
    for margin in (2.0, 8.0, 25.0, 60.0):
        for shift in (0.0, 0.3 * (r1 - r0)):
            out.append((max(r0 - margin + shift, 0.0), max(c0 - margin, 0.0), min(r1 + margin + shift, h - 1.0),
                        min(c1 + margin, w - 1.0)))
    return out


def test_onnx_decoder_gives_the_torch_decoders_masks_and_scores(cta, torch_and_onnx):
    volume, label = cta
    torch_backend, onnx_backend = torch_and_onnx
    window = volume_window(volume, "ct-angio")
    runs_before, decodes_before = onnx_backend._onnx_decoder.calls, onnx_backend.decode_calls
    slice_runs_before = onnx_backend._onnx_decoder.slice_part.calls
    differing, total, compared = 0, 0, 0
    for t in (55, 80, 110):
        emb = torch_backend.embed(window.apply(volume.slices()[t]))
        for box in _label_boxes(volume, label, t):
            a, b = torch_backend.decode(emb, None, box), onnx_backend.decode(emb, None, box)
            assert abs(a.score - b.score) < 1e-4
            differing += int((a.mask != b.mask).sum())
            total += a.mask.size
            compared += int(a.mask.any())
    decoded = onnx_backend.decode_calls - decodes_before
    assert decoded >= 20 and onnx_backend._onnx_decoder.calls - runs_before == decoded, "all in ONNX Runtime"
    assert onnx_backend._onnx_decoder.slice_part.calls - slice_runs_before == 3, "the slice part once per slice"
    assert compared >= 20, "the boxes gave real masks to compare"
    assert differing <= 1e-5 * total, f"{differing} of {total} pixels differ"


def test_a_fine_tuned_decoder_runs_in_torch_not_in_the_exported_one(cta):
    import torch

    volume, label = cta
    backend = load_backend("litemedsam", device="cpu", runtime="onnx")
    emb = backend.embed(volume_window(volume, "ct-angio").apply(volume.slices()[80]))
    box = _label_boxes(volume, label, 80)[1]
    shipped = backend.decode(emb, None, box)
    with torch.no_grad():  # what loading a fine-tuned decoder does: new weights, a new decoder version
        backend.sam.mask_decoder.iou_prediction_head.layers[-1].bias += 0.25
    backend.decoder_version += 1
    runs = backend._onnx_decoder.calls
    tuned = backend.decode(emb, None, box)
    assert backend._onnx_decoder.calls == runs
    assert tuned.score == pytest.approx(shipped.score + 0.25, abs=1e-4)


@pytest.mark.parametrize("model", ["encoder", "box decoder"])
def test_a_damaged_cached_onnx_model_is_exported_again(torch_and_onnx, tmp_path, caplog, model):
    from SPDSegmentLib.sam.onnx_runtime import OnnxBoxDecoder, OnnxImageEncoder

    _, onnx_backend = torch_and_onnx

    def build():
        if model == "encoder":
            return OnnxImageEncoder(onnx_backend.sam.image_encoder, onnx_backend.identity, 256, folder=tmp_path)
        return OnnxBoxDecoder(onnx_backend.sam, onnx_backend.identity, folder=tmp_path)

    first = build()
    assert first.path.is_file() and onnx_backend.checkpoint_sha256[:16] in first.path.name
    first.path.write_bytes(first.path.read_bytes()[:5000])  # truncated, as by a crash mid-copy
    second = build()
    assert "unusable" in caplog.text and second.path.stat().st_size > 5000


def test_a_rerun_after_one_point_moves_decodes_only_around_it_and_equals_a_fresh_run(cta, cta_centerline,
                                                                                    torch_and_onnx):
    volume, label = cta
    slab = crop_slices(volume, 60, 84)
    noisy = simulate(cta_centerline, volume, label, "clinical", seed=0).centerline
    src = volume.ras_to_src(noisy.points_ras)
    points = noisy.points_ras[(src[:, 0] >= 60) & (src[:, 0] < 84)]
    params = SegmentParams(intensity_preset="ct-angio")
    _, backend = torch_and_onnx
    first = segment(slab, Centerline(points, False), backend, load_prior("sam-track", backend), params)
    moved = points.copy()
    i = int(np.argmin(np.abs(slab.ras_to_src(moved)[:, 0] - 12)))
    moved[i] += [1.5, -1.0, 0.0]
    decodes = backend.decode_calls
    again = segment(slab, Centerline(moved, False), backend, load_prior("sam-track", backend), params)
    assert again.encode_calls == 0
    assert backend.decode_calls - decodes <= 20, "only the prompts around the moved point are decoded again"
    fresh_backend = load_backend("litemedsam", device="cpu", runtime="onnx")
    fresh = segment(slab, Centerline(moved, False), fresh_backend, load_prior("sam-track", fresh_backend), params)
    assert np.array_equal(again.mask, fresh.mask), "a re-run from caches equals a run from scratch"
    assert not np.array_equal(first.mask, np.zeros_like(first.mask))


@pytest.fixture(scope="module")
def studies(cta, cta_centerline, tmp_path_factory):
    """Two small studies (CTA slabs with noisy centerlines) and a third that cannot be read."""
    volume, label = cta
    root = tmp_path_factory.mktemp("studies")
    for name, (k0, k1) in {"upper": (90, 100), "lower": (50, 60)}.items():
        slab = crop_slices(volume, k0, k1)
        (root / name).mkdir()
        write_volume(slab, root / name / "image.nrrd")
        noisy = simulate(cta_centerline, volume, label, "clinical", seed=1).centerline
        src = volume.ras_to_src(noisy.points_ras)
        write_centerline(Centerline(noisy.points_ras[(src[:, 0] >= k0) & (src[:, 0] < k1)], False, name),
                         root / name / "centerline.mrk.json")
        (root / name / "case.json").write_text(json.dumps({"preset": "ct-angio"}))
    (root / "broken").mkdir()
    (root / "broken" / "image.nrrd").write_bytes(b"not an image")
    (root / "broken" / "centerline.mrk.json").write_text((root / "upper" / "centerline.mrk.json").read_text())
    return root


def test_segment_batch_on_dask_equals_a_serial_run_and_survives_a_failing_study(studies, tmp_path):
    from SPDSegmentLib.frontends.batch import EngineOptions, run_batch
    from SPDSegmentLib.method.pipeline import SegmentParams

    options = EngineOptions(device="cpu", threads=1, params=SegmentParams(propagate=False))  # reaches the workers
    serial = run_batch(studies, tmp_path / "serial", options, serial=True, log=lambda *a: None)
    parallel = run_batch(studies, tmp_path / "dask", options, workers=2, log=lambda *a: None)
    status = {r["study"]: r["status"] for r in parallel}
    assert status == {"broken": "failed", "lower": "ok", "upper": "ok"}
    assert "Cannot read volume" in next(r["error"] for r in parallel if r["study"] == "broken")
    assert len({r["worker_pid"] for r in parallel}) >= 1
    for name in ("upper", "lower"):
        a = (tmp_path / "serial" / name / "segmentation.seg.nrrd").read_bytes()
        b = (tmp_path / "dask" / name / "segmentation.seg.nrrd").read_bytes()
        assert a == b, f"{name}: the Dask result differs from the serial one"
        run = json.loads((tmp_path / "dask" / name / "summary.json").read_text())
        assert run["params"]["propagate"] is False and run["params"]["intensity_preset"] == "ct-angio"
    summary = json.loads((tmp_path / "dask" / "batch.json").read_text())
    assert summary["workers"] == 2 and len(summary["studies"]) == 3
    assert [r["status"] for r in serial] == [r["status"] for r in parallel]


def test_the_decoder_keeps_the_slice_part_of_the_last_few_slices(torch_and_onnx):
    """The per-slice part is computed once per embedding key and kept for the 4 most recently used
    slices; a kept part gives the same logits as a fresh one."""
    _, onnx_backend = torch_and_onnx
    decoder = onnx_backend._onnx_decoder
    rng = np.random.default_rng(0)
    embeddings = {k: rng.standard_normal(decoder.box_part.embedding_shape).astype(np.float32) for k in "abcde"}
    box = np.array([[60.0, 70.0, 130.0, 140.0]])
    decoder.clear()
    runs = decoder.slice_part.calls
    for key in "abcda":  # "a" again while it is kept
        decoder(embeddings[key], box, key=key)
    assert decoder.slice_part.calls - runs == 4
    decoder(embeddings["e"], box, key="e")  # a fifth slice: "b", the least recently used, is dropped
    decoder(embeddings["a"], box, key="a")
    assert decoder.slice_part.calls - runs == 5
    decoder(embeddings["b"], box, key="b")
    assert decoder.slice_part.calls - runs == 6
    fresh, cached = decoder(embeddings["b"], box)[0], decoder(embeddings["b"], box, key="b")[0]
    assert np.array_equal(fresh, cached)


def test_the_tracker_asks_a_batching_backend_for_each_slices_boxes_together(cta, backend, monkeypatch):
    """On CUDA (``batches_decodes``) the tracker decodes the boxes of all objects carried to a slice,
    and all seed sizes of a point group, in one call. On the CPU it decodes box by box, and here the
    batched call is a loop of single decodes. Forcing batching on the CPU checks the plumbing: the
    prior's maps are the same, batches hold several boxes, and the boxes the tracker then asks for
    come from the batches (were the cache keys to differ, every one would be decoded again)."""
    from SPDSegmentLib.evaluation.skeleton import centerline_from_label
    from SPDSegmentLib.sam.backend import SamBackend

    volume, label = cta
    volume, label = crop_slices(volume, 30, 44), label[30:44].copy()  # the descending aorta: one tube
    centerline = centerline_from_label(volume, label)
    params = SegmentParams(intensity_preset="ct-angio")

    def prior_maps():
        backend.decoded.clear()
        before = backend.decode_calls
        result = segment(volume, centerline, backend, load_prior("sam-track", backend), params)
        return result.saliency_maps, backend.decode_calls - before

    assert not backend.batches_decodes, "the CPU decodes box by box"
    lazy_maps, lazy_decodes = prior_maps()
    batches = []
    decode_boxes = SamBackend.decode_boxes

    def recording(self, emb, boxes_rc):
        batches.append(len(boxes_rc))
        return decode_boxes(self, emb, boxes_rc)

    monkeypatch.setattr(SamBackend, "batches_decodes", property(lambda self: True))
    monkeypatch.setattr(SamBackend, "decode_boxes", recording)
    batched_maps, batched_decodes = prior_maps()
    assert lazy_maps.keys() == batched_maps.keys()
    assert all(np.array_equal(lazy_maps[t], batched_maps[t]) for t in lazy_maps)
    assert max(batches) > 1 and sum(batches) >= 20, batches
    outside = batched_decodes - sum(batches)  # decoded one by one: grown boxes, the final pass
    assert outside < lazy_decodes - 0.5 * sum(batches), (outside, lazy_decodes, sum(batches))


def test_start_cold_forgets_embeddings_masks_and_slice_parts(cta, torch_and_onnx):
    """What the benchmarks measure from: after ``start_cold`` the same slice is encoded again, the
    same box decoded again and the decoder's slice part run again, as in a new process."""
    volume, _ = cta
    _, backend = torch_and_onnx
    image = volume_window(volume, "ct-angio").apply(volume.slices()[80])
    box = (40.0, 40.0, 80.0, 80.0)

    def counts():
        return backend.encode_calls, backend.decode_calls, backend._onnx_decoder.slice_part.calls

    backend.decode(backend.embed(image), None, box)
    warm = counts()
    backend.decode(backend.embed(image), None, box)
    assert counts() == warm, "served from the caches"
    backend.start_cold()
    backend.decode(backend.embed(image), None, box)
    assert [b - a for a, b in zip(warm, counts())] == [1, 1, 1]
