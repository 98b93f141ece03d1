"""Stage 1 of the method: train the saliency head on frozen SAM image embeddings.

Embeddings are computed once per slice and cached on disk (``EmbeddingCache`` folder), so CPU
training takes minutes. The split is by case (never by slice: neighbouring slices of one case are
near-duplicates). Loss = Dice + Focal (gamma 2) on the head's map upsampled to the slice. Adam,
early stopping on the validation loss, seeded. The output file records the SAM checkpoint's sha256,
input size, intensity presets, the suggested tau (best validation Dice of the thresholded map) and
a summary of the training data; :class:`~SPDSegmentLib.method.saliency.TrainedSaliencyPrior` refuses it
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

from ..evaluation.cases import Case, find_cases
from ..evaluation.metrics import dice
from ..io import read_label, read_volume
from ..method.saliency import TrainedSaliencyPrior, build_saliency_head, head_logits_to_slice
from ..method.windowing import volume_window

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
    use_cases: tuple[str, ...] = ()  # subset of the folder's cases (training + validation); () = all
    negatives_per_case: int = 6  # label-free slices near the structure, so the head learns "absent"
    hidden: int = 64
    lora_rank: int = 0  # > 0: also train LoRA adapters of rank r on the encoder's attention (GPU advised)
    lora_alpha: float = 8.0
    history: dict = field(default_factory=dict)


@dataclass
class SliceSample:
    case: str
    features: object  # torch tensor 1x256x64x64 (frozen encoder), or None when training LoRA
    inputs: object  # the encoder's input tensor 1x3xSxS when training LoRA, else None
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    target: np.ndarray  # HxW float32


def _case_samples(case: Case, backend, negatives: int, rng: random.Random, label_value=None,
                  lora: bool = False) -> list[SliceSample]:
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
        if lora:  # the adapted encoder runs in every step: keep its input, not a fixed embedding
            x, original_size, input_size = backend.encoder_input(window.apply(src[t]))
            out.append(SliceSample(case.name, None, x.cpu(), input_size, original_size, lab[t].astype(np.float32)))
            continue
        emb = backend.embed(window.apply(src[t]))
        out.append(SliceSample(case.name, emb.features, None, emb.input_size, emb.original_size,
                               lab[t].astype(np.float32)))
    return out


def _features(s: SliceSample, encoder, device):
    return s.features.to(device) if encoder is None else encoder(s.inputs.to(device))


def select_cases(cases: list[Case], names: tuple[str, ...]) -> list[Case]:
    """The cases named (all when none are), so a split is written down as names, not folders."""
    if not names:
        return cases
    missing = set(names) - {c.name for c in cases}
    if missing:
        raise ValueError(f"cases not found: {sorted(missing)}; the folder has {[c.name for c in cases]}")
    return [c for c in cases if c.name in names]


def _loss(head, batch, img_size, device, encoder=None):
    import torch

    total, count = 0.0, 0
    for s in batch:
        logits = head_logits_to_slice(head(_features(s, encoder, device)), s.input_size, s.original_size, img_size)
        target = torch.as_tensor(s.target, device=device)[None, None]
        total = total + dice_loss(torch.sigmoid(logits), target) + focal_loss(logits, target)
        count += 1
    return total / max(count, 1)


def _val_dice(head, samples, img_size, device, taus: tuple[float, ...], encoder=None) -> dict[float, float]:
    """Mean Dice of the thresholded map on the labelled validation slices, per threshold (one
    forward pass per slice for all thresholds)."""
    import torch

    scores: dict[float, list] = {tau: [] for tau in taus}
    with torch.inference_mode():
        for s in samples:
            if not s.target.any():
                continue
            logits = head_logits_to_slice(head(_features(s, encoder, device)), s.input_size, s.original_size,
                                          img_size)
            prob = torch.sigmoid(logits)[0, 0].cpu().numpy()
            for tau in taus:
                scores[tau].append(dice(prob > tau, s.target))
    return {tau: float(np.mean(v)) if v else 0.0 for tau, v in scores.items()}


def train_prior(cases_dir: str | Path, out: str | Path, backend, config: TrainConfig | None = None,
                png_dir: str | Path | None = None, progress=None) -> dict:
    """Train the stage-1 head; write ``out`` (prior.pt) and PNGs; return the training summary."""
    import torch

    config = config or TrainConfig()
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    cases = select_cases(find_cases(cases_dir), config.use_cases)
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
    lora = config.lora_rank > 0
    samples = {c.name: _case_samples(c, backend, config.negatives_per_case, rng, lora=lora) for c in cases}
    train = [s for n in names if n not in val_names for s in samples[n]]
    val = [s for n in sorted(val_names) for s in samples[n]]
    if not train or not val:
        raise ValueError("no labelled slices in the training or validation cases")
    device = backend.device
    head = build_saliency_head(hidden=config.hidden).to(device)
    params, encoder = list(head.parameters()), None
    if lora:
        from ..sam.lora import adapted_encoder

        if device == "cpu":
            log.warning("LoRA training on the CPU runs the SAM encoder forward and backward for every slice of "
                        "every epoch: expect hours on real data; a CUDA GPU is advised")
        encoder = adapted_encoder(backend.sam, config.lora_rank, config.lora_alpha).to(device)
        params += [p for p in encoder.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=config.lr)
    img_size = backend.input_size
    head.eval()
    untrained = _val_dice(head, val, img_size, device, (0.5,), encoder)[0.5]
    history = {"train": [], "val": []}
    best, best_state, waited = float("inf"), None, 0
    start = time.perf_counter()
    for epoch in range(config.epochs):
        head.train()
        rng.shuffle(train)
        losses = []
        for i in range(0, len(train), config.batch_size):
            loss = _loss(head, train[i: i + config.batch_size], img_size, device, encoder)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        head.eval()
        with torch.no_grad():
            val_loss = float(_loss(head, val, img_size, device, encoder))
        history["train"].append(float(np.mean(losses)))
        history["val"].append(val_loss)
        if progress:
            progress(epoch, history["train"][-1], val_loss)
        if val_loss < best - 1e-4:
            best, waited = val_loss, 0
            best_state = _snapshot(head, encoder)
        else:
            waited += 1
            if waited >= config.patience:
                break
    head.load_state_dict(best_state["head"])
    if encoder is not None:
        encoder.load_state_dict(best_state["lora"], strict=False)
    head.eval()
    taus = (0.3, 0.4, 0.5, 0.6, 0.7)
    val_dice = _val_dice(head, val, img_size, device, taus, encoder)
    tau = max(val_dice, key=val_dice.get)
    summary = {
        "model_type": "saliency-head-conv3", "backend": backend.name, "checkpoint_sha256": backend.checkpoint_sha256,
        "input_size": img_size, "embed_dim": 256, "hidden": config.hidden,
        "intensity_preset": sorted({c.info.get("preset", "auto") for c in cases}),
        "suggested_tau": tau, "val_dice_by_tau": {str(k): v for k, v in val_dice.items()},
        "val_dice_untrained": untrained,
        "structures": sorted({c.info.get("structure", "unknown") for c in cases}),
        "train_cases": [n for n in names if n not in val_names], "val_cases": sorted(val_names),
        "train_slices": len(train), "val_slices": len(val), "epochs_run": len(history["train"]),
        "best_val_loss": best, "seed": config.seed, "seconds": time.perf_counter() - start,
        "loss": "dice + focal(gamma=2)",
        "encoder": f"LoRA rank {config.lora_rank} on attention qkv" if lora else "frozen",
    }
    if lora:
        summary.update(lora_rank=config.lora_rank, lora_alpha=config.lora_alpha)
    TrainedSaliencyPrior(head.cpu(), summary, encoder=None if encoder is None else encoder.cpu()).save(out)
    if png_dir is not None:
        _training_pngs(Path(png_dir), history, head, val, img_size, None if encoder is None else encoder.cpu())
    config.history = history
    return summary


def _snapshot(head, encoder) -> dict:
    from ..sam.lora import lora_state

    return {"head": {k: v.detach().clone() for k, v in head.state_dict().items()},
            "lora": lora_state(encoder) if encoder is not None else {}}


def _training_pngs(folder: Path, history: dict, head, val, img_size, encoder=None) -> None:
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
            logits = head_logits_to_slice(head(_features(s, encoder, "cpu")), s.input_size, s.original_size, img_size)
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
