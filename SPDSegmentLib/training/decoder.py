"""Stage 2: fine-tune only SAM's mask decoder on CPD consensus prompts, with pairwise slice
consistency (PSC). Encoder and saliency prior stay frozen.

Per training slice the decoder sees the slice's prompts as the pipeline gives them to a point model
(``prompts="box+points"``, the default): each salient region's box together with its consensus
points, the masks of a slice's prompts united. The box-trained LiteMedSAM decoder misreads a point
inside a box, so this is what a decoder for the box pipeline must learn. ``prompts="points"`` trains
on the consensus points alone (a point-only decoder). Loss: Dice + Focal against the label plus
``lambda_psc * PSC(M_t, M_t+1)``, one direction: the earlier slice's prediction is detached, so only
slice t+1 is pulled towards slice t. The summary reports validation Dice before and after, for the
training prompts and for points alone, and the frozen decoder from boxes alone: what the pipeline
gets without a fine-tuned decoder, the figure a decoder has to beat. The output file holds the
decoder state and the SAM checkpoint's identity; ``load_backend(..., decoder=FILE)`` refuses it for
another model.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np

from ..evaluation.cases import find_cases
from ..evaluation.metrics import dice
from ..evaluation.noise import simulate
from ..evaluation.skeleton import centerline_from_label
from ..io import read_label, read_volume
from ..method.cpd import distill
from ..method.prompts import slice_prompts
from ..method.rendering import render, run_radius_px
from ..method.saliency import PriorInputs
from ..method.windowing import volume_window
from .prior import dice_loss, focal_loss, psc_loss, select_cases

DECODER_FORMAT = "spdsegment-mask-decoder"
PROMPT_KINDS = ("box+points", "points")


def _logits(sam, features, prompts: list[tuple[np.ndarray | None, tuple | None]], input_size, original_size,
            transform):
    """Differentiable decode of one slice's prompts at slice resolution: (1, 1, H, W) logits, the
    prompts' masks united (the maximum of their logits, as the pipeline unites their masks). Each
    prompt is (points (N, 2) row/col or None, box (r0, c0, r1, c1) or None)."""
    import torch

    out = None
    for points_rc, box_rc in prompts:
        pts = boxes = None
        if points_rc is not None and len(points_rc):
            coords = transform.apply_coords(np.asarray(points_rc, dtype=float)[:, ::-1], original_size)
            pts = (torch.as_tensor(coords, dtype=torch.float32)[None], torch.ones(1, len(coords), dtype=torch.int))
        if box_rc is not None:
            r0, c0, r1, c1 = box_rc
            box = transform.apply_boxes(np.array([[c0, r0, c1, r1]], dtype=float), original_size)
            boxes = torch.as_tensor(box, dtype=torch.float32)
        sparse, dense = sam.prompt_encoder(points=pts, boxes=boxes, masks=None)
        low, _ = sam.mask_decoder(image_embeddings=features, image_pe=sam.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                  multimask_output=False)
        logits = sam.postprocess_masks(low, input_size, original_size)
        out = logits if out is None else torch.maximum(out, logits)
    return out


def _slice_prompts(item: dict, kind: str) -> list[tuple[np.ndarray | None, tuple | None]]:
    """An item's prompts: the rendered boxes with their points, the boxes alone, or the points alone."""
    if kind == "points":
        return [(item["points"], None)]
    if kind == "box":
        return [(None, box) for _, box in item["rendered"]]
    return list(item["rendered"])


def _case_items(case, backend, prior, seed: int, tau: float, context: int):
    volume = read_volume(case.image, case.name)
    label = read_label(case.label, volume, label_value=case.info.get("label_value"))
    noisy = simulate(centerline_from_label(volume, label), volume, label, "clinical", seed=seed).centerline
    prompts = slice_prompts(noisy, volume)
    window = volume_window(volume, case.info.get("preset", "auto"))
    src, lab = volume.slices(), volume.with_array(label).slices()
    slices = sorted(prompts)
    u8 = {t: window.apply(src[t]) for t in range(max(0, slices[0] - context), min(len(src), slices[-1] + context + 1))}
    sal = prior.compute(PriorInputs(volume, u8, prompts, backend, window.preset), slices)
    decisions = distill(prompts, sal, slices, tau=tau, context=context)
    consensus = {t: d.consensus for t, d in decisions.items()}
    radius_px = run_radius_px(sal, consensus, tau, min(volume.in_plane_spacing))
    items = []
    for t in slices:
        if not consensus[t]:
            continue
        rendered = [(r.points_rc, r.box_rc) for r in render(consensus[t], sal[t], tau, radius_px, "points", True)]
        emb = backend.embed(u8[t])
        items.append({"case": case.name, "t": t, "points": np.array([[p.row, p.col] for p in consensus[t]]),
                      "rendered": rendered, "emb": emb, "target": lab[t].astype(np.float32)})
    return items


def evaluate_prompts(backend, items, kind: str) -> float:
    """Mean Dice of decoding ``items`` (slices with consensus points and a label) from prompts of
    ``kind``: ``box+points``, ``points`` or ``box`` (see :func:`_slice_prompts`)."""
    import torch

    scores = []
    with torch.inference_mode():
        for it in items:
            if not it["target"].any():
                continue
            logits = _logits(backend.sam, it["emb"].features, _slice_prompts(it, kind), it["emb"].input_size,
                             it["emb"].original_size, backend.predictor.transform)
            scores.append(dice(logits[0, 0].numpy() > 0, it["target"]))
    return float(np.mean(scores)) if scores else 0.0


def train_decoder(cases_dir, out, backend, prior, val_cases: tuple[str, ...] = (), epochs: int = 8,
                  lr: float = 1e-4, lambda_psc: float = 0.5, seed: int = 0, tau: float = 0.5, context: int = 2,
                  progress=None, use_cases: tuple[str, ...] = (), prompts: str = "box+points") -> dict:
    import torch

    if prompts not in PROMPT_KINDS:
        raise ValueError(f"prompts must be one of {PROMPT_KINDS}, got {prompts!r}")

    torch.manual_seed(seed)
    rng = random.Random(seed)
    cases = select_cases(find_cases(cases_dir), use_cases)
    val_names = set(val_cases) or {cases[-1].name}
    items = {c.name: _case_items(c, backend, prior, seed, tau, context) for c in cases}
    train = [it for c in cases if c.name not in val_names for it in items[c.name]]
    val = [it for n in sorted(val_names) for it in items[n]]
    if not train or not val:
        raise ValueError("decoder training needs consensus prompts in training and validation cases")
    sam = backend.sam
    frozen_box = evaluate_prompts(backend, val, "box")
    before = {kind: evaluate_prompts(backend, val, kind) for kind in PROMPT_KINDS}
    for p in sam.parameters():
        p.requires_grad_(False)
    for p in sam.mask_decoder.parameters():
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(sam.mask_decoder.parameters(), lr=lr, weight_decay=1e-4)
    by_case: dict[str, list] = {}
    for it in train:
        by_case.setdefault(it["case"], []).append(it)
    history = []
    start = time.perf_counter()
    sam.mask_decoder.train()
    backend.decoder_version += 1  # the decoder changes in place: masks decoded before are stale
    for epoch in range(epochs):
        losses = []
        order = list(by_case)
        rng.shuffle(order)
        for name in order:
            seq = sorted(by_case[name], key=lambda it: it["t"])
            previous = None
            for it in seq:
                logits = _logits(sam, it["emb"].features, _slice_prompts(it, prompts), it["emb"].input_size,
                                 it["emb"].original_size, backend.predictor.transform)
                target = torch.as_tensor(it["target"])[None, None]
                prob = torch.sigmoid(logits)
                loss = dice_loss(prob, target) + focal_loss(logits, target)
                if previous is not None and previous[0] == it["t"] - 1:
                    loss = loss + lambda_psc * psc_loss(previous[1], prob)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                previous = (it["t"], prob.detach())
                losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
        if progress:
            progress(epoch, history[-1])
    sam.mask_decoder.eval()
    for p in sam.parameters():
        p.requires_grad_(False)
    after = {kind: evaluate_prompts(backend, val, kind) for kind in PROMPT_KINDS}
    summary = {"format": DECODER_FORMAT, "backend": backend.name, "checkpoint_sha256": backend.checkpoint_sha256,
               "lambda_psc": lambda_psc, "epochs": epochs, "lr": lr, "seed": seed, "loss_history": history,
               "trained_on": prompts, "frozen_box_only_val_dice": frozen_box,
               "val_dice_before": before[prompts], "val_dice_after": after[prompts],
               "point_only_val_dice_before": before["points"], "point_only_val_dice_after": after["points"],
               "train_cases": sorted(by_case), "val_cases": sorted(val_names), "train_slices": len(train),
               "seconds": time.perf_counter() - start,
               "prompts": "points"}  # the backend's prompt mode with this decoder (load_decoder); not trained_on
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": DECODER_FORMAT, "metadata": json.dumps(summary),
                "state_dict": sam.mask_decoder.state_dict()}, str(out))
    return summary


def load_decoder(backend, path) -> dict:
    """Load a fine-tuned mask decoder into ``backend`` (same SAM checkpoint only); point prompts on."""
    from ..sam.backend import CheckpointError
    from ..sam.model_files import read_model_file

    meta, data = read_model_file(path, DECODER_FORMAT, "decoder", CheckpointError)
    if meta["checkpoint_sha256"] != backend.checkpoint_sha256:
        raise CheckpointError(f"{path} was fine-tuned from another SAM checkpoint ({meta['backend']}); "
                              f"it cannot be used with {backend.name}")
    backend.sam.mask_decoder.load_state_dict(data["state_dict"], strict=True)
    backend.decoder_version += 1  # masks decoded with the old decoder are stale
    backend.prompt_mode = meta.get("prompts", "points")
    backend.decoder_file = str(path)
    return meta
