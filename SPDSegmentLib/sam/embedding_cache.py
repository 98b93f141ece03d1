"""Cache of SAM image embeddings keyed by (backend identity, slice content).

Keying by the 8-bit slice's bytes rather than by (volume, index) means a cached embedding can never
be served for a slice whose voxels or window changed, and the same slice in two runs (moved prompts,
another method in the evaluation) is encoded once. An optional folder persists them across runs.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SliceEmbedding:
    features: "object"  # torch.Tensor 1x256x64x64 on the CPU
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class EmbeddingCache:
    """In-memory LRU (``max_items`` slices) with an optional on-disk layer in ``folder``."""

    def __init__(self, max_items: int = 1024, folder: str | Path | None = None) -> None:
        self.max_items = max_items
        self.folder = Path(folder) if folder else None
        self._items: OrderedDict[str, SliceEmbedding] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(identity: str, slice_u8: np.ndarray) -> str:
        digest = hashlib.sha1(np.ascontiguousarray(slice_u8).tobytes())
        digest.update(repr(slice_u8.shape).encode())
        return f"{identity.replace(':', '-')}-{digest.hexdigest()}"

    def get(self, key: str) -> SliceEmbedding | None:
        item = self._items.get(key)
        if item is None and self.folder is not None and (self.folder / f"{key}.pt").is_file():
            import torch

            data = torch.load(self.folder / f"{key}.pt", map_location="cpu", weights_only=True)
            item = SliceEmbedding(data["features"], tuple(data["original_size"]), tuple(data["input_size"]))
            self._items[key] = item
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: str, item: SliceEmbedding) -> None:
        self._items[key] = item
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        if self.folder is not None:
            import torch

            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f"{key}.pt.tmp"
            torch.save({"features": item.features, "original_size": list(item.original_size),
                        "input_size": list(item.input_size)}, tmp)
            tmp.replace(self.folder / f"{key}.pt")

    def __len__(self) -> int:
        return len(self._items)

    def clear(self, disk: bool = True) -> int:
        """Forget everything; with ``disk`` also delete the folder's files. Returns files removed."""
        self._items.clear()
        removed = 0
        if disk and self.folder is not None and self.folder.is_dir():
            for f in self.folder.glob("*.pt"):
                f.unlink()
                removed += 1
        return removed
