import numpy as np
import pytest
from skimage.measure import label as connected
from skimage.measure import regionprops

from SPDSegmentLib.evaluation.metrics import dice
from SPDSegmentLib.method.windowing import volume_window
from SPDSegmentLib.sam.backend import CheckpointError, load_backend


def _slice_and_regions(cta, t=60):
    volume, label = cta
    u8 = volume_window(volume, "ct-angio").apply(volume.slices()[t])
    lab = volume.with_array(label).slices()[t]
    return u8, lab, regionprops(connected(lab > 0))


def test_bundled_litemedsam_segments_a_real_ct_slice_from_a_box(cta, backend):
    u8, lab, regions = _slice_and_regions(cta)
    assert backend.prompt_mode == "box" and backend.input_size == 256
    for region in regions:
        r0, c0, r1, c1 = region.bbox
        mask = backend.decode(backend.embed(u8), box_rc=(r0 - 3, c0 - 3, r1 + 2, c1 + 2)).mask
        truth = np.zeros_like(lab, dtype=bool)
        truth[tuple(region.coords.T)] = True
        # measured 0.95-0.98 on this CTA with LiteMedSAM; 0.85 leaves room for CPU numerics
        assert dice(mask, truth) > 0.85


def test_litemedsam_ignores_point_only_prompts(cta, backend):
    """Why prompts are rendered as boxes for this backend (documented behaviour of LiteMedSAM)."""
    u8, lab, regions = _slice_and_regions(cta)
    centre = np.array([regions[0].centroid])
    mask = backend.decode(backend.embed(u8), points_rc=centre).mask
    truth = np.zeros_like(lab, dtype=bool)
    truth[tuple(regions[0].coords.T)] = True
    assert dice(mask, truth) < 0.5


def test_embeddings_are_cached_by_slice_content(cta, backend):
    u8, _, _ = _slice_and_regions(cta, 61)
    # the session-wide backend may have met this slice in an earlier test: make its content new to it
    u8 = u8.copy()
    u8[:3, :3] = np.uint8(np.random.default_rng().integers(0, 256, (3, 3)))
    before = backend.encode_calls
    first = backend.embed(u8)
    second = backend.embed(u8.copy())
    assert backend.encode_calls == before + 1 and second is first
    backend.embed(np.ascontiguousarray(u8[::-1]))
    assert backend.encode_calls == before + 2


def test_batched_box_decoding_equals_single_decoding(cta, backend):
    u8, _, regions = _slice_and_regions(cta)
    emb = backend.embed(u8)
    boxes = np.array([[r.bbox[0] - 2, r.bbox[1] - 2, r.bbox[2] + 1, r.bbox[3] + 1] for r in regions], float)
    masks, scores = backend.decode_boxes(emb, boxes)
    for m, s, b in zip(masks, scores, boxes):
        single = backend.decode(emb, box_rc=tuple(b))
        np.testing.assert_array_equal(m, single.mask)
        assert abs(s - single.score) < 1e-5


@pytest.fixture(scope="module")
def random_vit_b(tmp_path_factory):
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "random_vit_b.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    return path


def test_official_sam_loads_from_a_checkpoint_file_and_runs(random_vit_b, cta):
    backend = load_backend("sam_vit_b", random_vit_b, device="cpu")
    assert backend.prompt_mode == "points" and backend.input_size == 1024
    u8, lab, regions = _slice_and_regions(cta)
    out = backend.decode(backend.embed(u8), points_rc=np.array([regions[0].centroid]))
    assert out.mask.shape == lab.shape  # random weights: only the path is checked, not the quality


def test_official_sam_refuses_missing_truncated_and_mismatched_checkpoints(random_vit_b, tmp_path):
    with pytest.raises(CheckpointError, match="needs a checkpoint"):
        load_backend("sam_vit_b", None, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        load_backend("sam_vit_b", tmp_path / "nope.pth", device="cpu")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(random_vit_b.read_bytes()[: 5_000_000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_backend("sam_vit_b", truncated, device="cpu")
    with pytest.raises(CheckpointError, match="does not match the sam_vit_l architecture"):
        load_backend("sam_vit_l", random_vit_b, device="cpu")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        load_backend("sam_vit_h", text, device="cpu")
    with pytest.raises(ValueError, match="unknown SAM backend"):
        load_backend("sam_vit_x")
