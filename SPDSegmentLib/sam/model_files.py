"""SPDSegment's own model files (trained prior, fine-tuned decoder): a torch dict with a ``format``
tag, JSON ``metadata`` and a ``state_dict``. One reader, so every file type fails the same clear way."""
from __future__ import annotations

import json
from pathlib import Path


def read_model_file(path: str | Path, expected_format: str, what: str, error: type[Exception]) -> tuple[dict, dict]:
    """(metadata, raw dict) of a model file, or ``error`` saying what is wrong with it."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file not found: {path}")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise error(f"{path} is not a readable {what} file ({type(exc).__name__})") from exc
    if not isinstance(data, dict) or data.get("format") != expected_format:
        raise error(f"{path} is not an SPDSegment {what} file (format field missing)")
    return json.loads(data["metadata"]), data
