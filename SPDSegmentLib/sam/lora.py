"""Low-rank adapters (LoRA) on the SAM image encoder's attention projections, for stage-1 training.

Why: the frozen encoder was trained for promptable segmentation at large; a rank-r update of every
attention block's ``qkv`` projection lets a site adapt the features its saliency head reads, with
r * (in + out) trainable numbers per block instead of the whole encoder. The adapted encoder is a
copy that only the prior uses: SAM itself keeps decoding from the original encoder's embeddings.
Works for LiteMedSAM's TinyViT and the official SAM ViTs (both name the projection ``qkv``).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """``base(x) + scale * x A^T B^T`` with ``base`` frozen; B starts at zero, so training starts
    from exactly the frozen encoder."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base
        base.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


def add_lora(encoder: nn.Module, rank: int, alpha: float) -> list[nn.Parameter]:
    """Freeze ``encoder`` and wrap each attention ``qkv`` projection; returns the trainable parameters."""
    encoder.requires_grad_(False)
    wrapped = 0
    for module in list(encoder.modules()):
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, nn.Linear):
            module.qkv = LoRALinear(qkv, rank, alpha)
            wrapped += 1
    if not wrapped:
        raise ValueError("this image encoder has no attention 'qkv' projections to adapt")
    return [p for name, p in encoder.named_parameters() if ".lora_" in name]


def lora_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (the frozen encoder is the SAM checkpoint, identified by its sha256)."""
    return {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items() if ".lora_" in k}


def adapted_encoder(sam, rank: int, alpha: float, state: dict | None = None) -> nn.Module:
    """A copy of ``sam.image_encoder`` with adapters (loaded from ``state`` when given)."""
    encoder = copy.deepcopy(sam.image_encoder)
    add_lora(encoder, rank, alpha)
    if state is not None:
        expected = set(lora_state(encoder))
        if set(state) != expected:
            raise ValueError(f"LoRA weights do not fit this encoder ({len(state)} tensors, expected {len(expected)})")
        encoder.load_state_dict(state, strict=False)
    return encoder.eval()
