"""Stage 1 of the method: train the saliency head on frozen SAM image embeddings.

Embeddings are computed once per slice and cached on disk (``EmbeddingCache`` folder), so CPU
training takes minutes. The split is by case (never by slice: neighbouring slices of one case are
near-duplicates). Loss = Dice + Focal (gamma 2) on the head's map upsampled to the slice. Adam,
early stopping on the validation loss, seeded. The output file records the SAM checkpoint's sha256,
input size, intensity presets, the suggested tau (best validation Dice of the thresholded map) and
a summary of the training data; :class:`~SPDSegmentLib.saliency.TrainedSaliencyPrior` refuses it
for any other checkpoint. Also: ``psc_loss`` (pairwise slice consistency), used by decoder training.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cases import Case, find_cases
from .intensity import volume_window
from .io import read_label, read_volume
from .saliency import TrainedSaliencyPrior, build_saliency_head, head_logits_to_slice

log = logging.getLogger(__name__)


def dice_loss(prob, target, eps: float = 1e-6):
    """1 - soft Dice per sample, averaged over the batch. prob/target: (B, 1, H, W)."""
    inter = (prob * target).flatten(1).sum(1)
    denom = prob.flatten(1).sum(1) + target.flatten(1).sum(1)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def focal_loss(logits, target, gamma: float = 2.0):
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = bce.neg().exp()
    return ((1 - p_t) ** gamma * bce).mean()


def psc_loss(prob_t, prob_next, eps: float = 1e-6):
    """Pairwise slice consistency: 1 - soft Dice between adjacent slices' probability maps,
    one direction (t, t+1), as in the method: L = 1 - 2 sum(M_t M_t+1) / (sum M_t + sum M_t+1)."""
    inter = (prob_t * prob_next).flatten(1).sum(1)
    denom = prob_t.flatten(1).sum(1) + prob_next.flatten(1).sum(1)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


@dataclass
class TrainConfig:
    epochs: int = 60
    patience: int = 8
    lr: float = 1e-3
    batch_size: int = 8
    seed: int = 0
    val_fraction: float = 0.25
    val_cases: tuple[str, ...] = ()
    negatives_per_case: int = 6  # label-free slices near the structure, so the head learns "absent"
    hidden: int = 64
    history: dict = field(default_factory=dict)


@dataclass
class SliceSample:
    case: str
    features: object  # torch tensor 1x256x64x64
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    target: np.ndarray  # HxW float32


def _case_samples(case: Case, backend, negatives: int, rng: random.Random, label_value=None) -> list[SliceSample]:
    volume = read_volume(case.image, case.name)
    label = read_label(case.label, volume, label_value=case.info.get("label_value", label_value))
    window = volume_window(volume, case.info.get("preset", "auto"))
    src, lab = volume.slices(), volume.with_array(label).slices()
    present = [t for t in range(len(lab)) if lab[t].any()]
    if not present:
        return []
    around = [t for t in range(max(0, present[0] - 6), min(len(lab), present[-1] + 7)) if not lab[t].any()]
    chosen = present + rng.sample(around, min(negatives, len(around)))
    out = []
    for t in sorted(chosen):
        emb = backend.embed(window.apply(src[t]))
        out.append(SliceSample(case.name, emb.features, emb.input_size, emb.original_size,
                               lab[t].astype(np.float32)))
    return out


def _loss(head, batch, img_size, device):
    import torch

    total, count = 0.0, 0
    for s in batch:
        logits = head_logits_to_slice(head(s.features.to(device)), s.input_size, s.original_size, img_size)
        target = torch.as_tensor(s.target, device=device)[None, None]
        total = total + dice_loss(torch.sigmoid(logits), target) + focal_loss(logits, target)
        count += 1
    return total / max(count, 1)


def _val_dice(head, samples, img_size, device, tau: float) -> float:
    import torch

    scores = []
    with torch.inference_mode():
        for s in samples:
            if not s.target.any():
                continue
            logits = head_logits_to_slice(head(s.features.to(device)), s.input_size, s.original_size, img_size)
            pred = (torch.sigmoid(logits)[0, 0].cpu().numpy() > tau)
            scores.append(2 * (pred & (s.target > 0)).sum() / (pred.sum() + s.target.sum() + 1e-9))
    return float(np.mean(scores)) if scores else 0.0


def train_prior(cases_dir: str | Path, out: str | Path, backend, config: TrainConfig | None = None,
                png_dir: str | Path | None = None, progress=None) -> dict:
    """Train the stage-1 head; write ``out`` (prior.pt) and PNGs; return the training summary."""
    import torch

    config = config or TrainConfig()
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    cases = find_cases(cases_dir)
    names = [c.name for c in cases]
    if config.val_cases:
        missing = set(config.val_cases) - set(names)
        if missing:
            raise ValueError(f"validation cases not found: {sorted(missing)}")
        val_names = set(config.val_cases)
    else:
        shuffled = names[:]
        rng.shuffle(shuffled)
        val_names = set(shuffled[: max(1, int(round(config.val_fraction * len(names))))])
    if len(val_names) >= len(names):
        raise ValueError("need at least one training case besides the validation cases")
    samples = {c.name: _case_samples(c, backend, config.negatives_per_case, rng) for c in cases}
    train = [s for n in names if n not in val_names for s in samples[n]]
    val = [s for n in sorted(val_names) for s in samples[n]]
    if not train or not val:
        raise ValueError("no labelled slices in the training or validation cases")
    device = backend.device
    head = build_saliency_head(hidden=config.hidden).to(device)
    optimiser = torch.optim.Adam(head.parameters(), lr=config.lr)
    img_size = backend.input_size
    head.eval()
    untrained = _val_dice(head, val, img_size, device, 0.5)
    history = {"train": [], "val": []}
    best, best_state, waited = float("inf"), None, 0
    start = time.perf_counter()
    for epoch in range(config.epochs):
        head.train()
        rng.shuffle(train)
        losses = []
        for i in range(0, len(train), config.batch_size):
            loss = _loss(head, train[i: i + config.batch_size], img_size, device)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss))
        head.eval()
        with torch.no_grad():
            val_loss = float(_loss(head, val, img_size, device))
        history["train"].append(float(np.mean(losses)))
        history["val"].append(val_loss)
        if progress:
            progress(epoch, history["train"][-1], val_loss)
        if val_loss < best - 1e-4:
            best, waited = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            waited += 1
            if waited >= config.patience:
                break
    head.load_state_dict(best_state)
    head.eval()
    taus = (0.3, 0.4, 0.5, 0.6, 0.7)
    val_dice = {tau: _val_dice(head, val, img_size, device, tau) for tau in taus}
    tau = max(val_dice, key=val_dice.get)
    summary = {
        "model_type": "saliency-head-conv3", "backend": backend.name, "checkpoint_sha256": backend.checkpoint_sha256,
        "input_size": img_size, "embed_dim": 256, "hidden": config.hidden,
        "intensity_preset": sorted({c.info.get("preset", "auto") for c in cases}),
        "suggested_tau": tau, "val_dice_by_tau": {str(k): v for k, v in val_dice.items()},
        "val_dice_untrained": untrained,
        "train_cases": [n for n in names if n not in val_names], "val_cases": sorted(val_names),
        "train_slices": len(train), "val_slices": len(val), "epochs_run": len(history["train"]),
        "best_val_loss": best, "seed": config.seed, "seconds": time.perf_counter() - start,
        "loss": "dice + focal(gamma=2)", "encoder": "frozen",
    }
    TrainedSaliencyPrior(head.cpu(), summary).save(out)
    if png_dir is not None:
        _training_pngs(Path(png_dir), history, head, val, img_size)
    config.history = history
    return summary


def _training_pngs(folder: Path, history: dict, head, val, img_size) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(history["train"], label="train")
    ax.plot(history["val"], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Dice + Focal loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "prior_loss.png", dpi=110)
    plt.close(fig)
    shown = [s for s in val if s.target.any()][:: max(1, len(val) // 4)][:4]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(3 * len(shown), 3), squeeze=False)
    with torch.inference_mode():
        for ax, s in zip(axes[0], shown):
            logits = head_logits_to_slice(head(s.features), s.input_size, s.original_size, img_size)
            ax.imshow(torch.sigmoid(logits)[0, 0].numpy(), vmin=0, vmax=1)
            ax.contour(s.target, [0.5], colors="w", linewidths=0.8)
            ax.set_title(s.case, fontsize=7)
            ax.axis("off")
    fig.suptitle("validation saliency (colour) vs label (white)", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "prior_saliency.png", dpi=110)
    plt.close(fig)


def write_summary(summary: dict, path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, default=float))
