"""Stage-1 prior training and stage-2 decoder training on real labelled CT/MRI (small cases)."""
import shutil

import numpy as np
import pytest
import torch

from SPDSegmentLib.cases import build_sample_cases
from SPDSegmentLib.decoder_training import load_decoder, train_decoder
from SPDSegmentLib.saliency import TrainedSaliencyPrior, load_prior
from SPDSegmentLib.sam_backend import CheckpointError
from SPDSegmentLib.training import TrainConfig, psc_loss, train_prior


def test_psc_loss_equals_the_hand_computed_value():
    m_t = torch.tensor([[1.0, 0.0], [0.5, 0.0]])[None, None]
    m_next = torch.tensor([[1.0, 1.0], [0.0, 0.0]])[None, None]
    # intersection 1.0; sums 1.5 and 2.0 -> 1 - 2 * 1 / 3.5
    assert abs(float(psc_loss(m_t, m_next, eps=0.0)) - (1 - 2 / 3.5)) < 1e-7
    assert float(psc_loss(m_t, m_t, eps=0.0)) < float(psc_loss(m_t, m_next, eps=0.0))


@pytest.fixture(scope="module")
def aorta_cases(tmp_path_factory):
    built = tmp_path_factory.mktemp("built")
    build_sample_cases(built, log=lambda *_: None)
    chosen = tmp_path_factory.mktemp("aorta_cases")
    for name in ("abdomen_ct_aorta", "abdomen_ct_dicom_aorta", "abdomen_mr_aorta"):
        shutil.copytree(built / name, chosen / name)
    return chosen


@pytest.fixture(scope="module")
def trained_prior(aorta_cases, backend, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "prior.pt"
    config = TrainConfig(epochs=20, patience=6, seed=0, val_cases=("abdomen_ct_aorta",))
    summary = train_prior(aorta_cases, out, backend, config, png_dir=out.parent)
    return out, summary, config.history


def test_prior_training_learns_and_generalises_to_a_held_out_case(trained_prior, backend):
    path, summary, history = trained_prior
    assert history["train"][-1] < 0.7 * history["train"][0], "training loss must drop"
    # measured on the held-out abdominal CT aorta (2 training cases, CPU): 0.28 at its best tau, from
    # near 0 untrained. A weak prior (see README); the threshold guards that learning happened at all.
    best = max(summary["val_dice_by_tau"].values())
    assert best > 0.15 and best > summary["val_dice_untrained"] + 0.1
    assert summary["val_cases"] == ["abdomen_ct_aorta"] and "abdomen_ct_aorta" not in summary["train_cases"]
    prior = load_prior(str(path), backend)
    assert isinstance(prior, TrainedSaliencyPrior) and prior.default_tau == summary["suggested_tau"]
    assert (path.parent / "prior_loss.png").exists() and (path.parent / "prior_saliency.png").exists()


def test_decoder_fine_tuning_makes_point_prompts_work(aorta_cases, trained_prior, tmp_path):
    from SPDSegmentLib.sam_backend import load_backend

    backend = load_backend("litemedsam", device="cpu")  # its own copy: training changes the decoder
    prior = load_prior(str(trained_prior[0]), backend)
    summary = train_decoder(aorta_cases, tmp_path / "decoder.pt", backend, prior, ("abdomen_ct_aorta",),
                            epochs=3, seed=0)
    assert summary["point_only_val_dice_after"] > summary["point_only_val_dice_before"] + 0.2
    fresh = load_backend("litemedsam", device="cpu")
    meta = load_decoder(fresh, tmp_path / "decoder.pt")
    assert fresh.prompt_mode == "points" and meta["lambda_psc"] == 0.5
    for a, b in zip(fresh.sam.mask_decoder.state_dict().values(), backend.sam.mask_decoder.state_dict().values()):
        assert torch.equal(a, b)
    bad = tmp_path / "bad.pt"
    torch.save({"format": "spdsegment-mask-decoder", "metadata": '{"checkpoint_sha256": "x", "backend": "y"}',
                "state_dict": {}}, bad)
    with pytest.raises(CheckpointError, match="another SAM checkpoint"):
        load_decoder(fresh, bad)
