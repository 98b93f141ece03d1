import numpy as np
import pytest

from SPDSegmentLib.method.prompts import PromptPoint
from SPDSegmentLib.method.saliency import (
    AppearanceTrackPrior,
    PriorFileError,
    PriorInputs,
    TrainedSaliencyPrior,
    build_saliency_head,
    load_prior,
)
from SPDSegmentLib.volume import Volume


def _tube_volume():
    """A bright tube (radius 4 px) along the slices, and a second bright tube 20 px away."""
    arr = np.full((12, 40, 40), 0.0, np.float32)
    rr, cc = np.mgrid[:40, :40]
    for t in range(12):
        arr[t][(rr - 12) ** 2 + (cc - 12) ** 2 <= 16] = 300
        arr[t][(rr - 28) ** 2 + (cc - 28) ** 2 <= 16] = 300
    return Volume(arr + np.random.default_rng(0).normal(0, 5, arr.shape), np.diag([1.0, 1.0, 2.0, 1.0]))


def test_intensity_prior_votes_down_a_short_drift_onto_a_similar_neighbour():
    vol = _tube_volume()
    prompts = {t: [PromptPoint(t, 12, 12)] for t in range(12)}
    prompts[6] = [PromptPoint(6, 28, 28)]  # one slice drifted onto the other tube
    sal = AppearanceTrackPrior(window=3).compute(PriorInputs(vol, {}, prompts), list(range(12)))
    assert sal[6][12, 12] > 0.5  # the target stays salient on the drifted slice
    assert sal[6][28, 28] < 0.5  # the neighbour is not
    assert all(0 <= m.min() and m.max() <= 1 for m in sal.values())


def test_trained_prior_file_round_trip_and_checkpoint_identity(tmp_path, backend):
    head = build_saliency_head()
    meta = {"backend": backend.name, "checkpoint_sha256": backend.checkpoint_sha256, "suggested_tau": 0.4,
            "intensity_preset": "ct-angio", "embed_dim": 256, "hidden": 64}
    path = TrainedSaliencyPrior(head, meta).save(tmp_path / "prior.pt")
    loaded = load_prior(str(path), backend)
    assert loaded.default_tau == 0.4
    for a, b in zip(head.state_dict().values(), loaded.head.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())
    meta_other = dict(meta, checkpoint_sha256="0" * 64)
    other = TrainedSaliencyPrior(head, meta_other).save(tmp_path / "other.pt")
    with pytest.raises(PriorFileError, match="trained on embeddings of SAM checkpoint"):
        load_prior(str(other), backend)
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(PriorFileError):
        load_prior(str(tmp_path / "junk.pt"), backend)


def test_trained_head_maps_a_real_embedding_to_a_slice_sized_probability_map(cta, backend):
    volume, _ = cta
    meta = {"backend": backend.name, "checkpoint_sha256": backend.checkpoint_sha256}
    prior = TrainedSaliencyPrior(build_saliency_head().eval(), meta)
    from SPDSegmentLib.method.windowing import volume_window

    u8 = {60: volume_window(volume, "ct-angio").apply(volume.slices()[60])}
    out = prior.compute(PriorInputs(volume, u8, {}, backend, "ct-angio"), [60])
    assert out[60].shape == volume.slice_shape and 0 <= out[60].min() <= out[60].max() <= 1
