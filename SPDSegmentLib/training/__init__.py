"""Training: stage 1 (the saliency head, optionally with LoRA) and stage 2 (the mask decoder with
pairwise slice consistency)."""
