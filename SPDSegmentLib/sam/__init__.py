"""SAM models behind one interface: backends (LiteMedSAM, official SAM), the embedding cache, LoRA
adapters and SPDSegment's own model-file format. Knows nothing about prompts or priors."""
