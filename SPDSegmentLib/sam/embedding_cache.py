"""Caches of SAM work: image embeddings keyed by (backend identity, slice content), and decoded
masks keyed by (embedding, prompt).

Keying by the 8-bit slice's bytes rather than by (volume, index) means a cached embedding can never
be served for a slice whose voxels or window changed, and the same slice in two runs (moved prompts,
another method in the evaluation) is encoded once. An optional folder persists embeddings across
runs and processes: each file is written to a private temporary name and renamed into place (two
processes sharing the folder never see half a file), and carries its own key; a truncated, foreign
or mismatched file is logged, deleted and recomputed, never trusted.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# where train-prior, train-decoder and the studies keep embeddings between runs unless told otherwise
# (evaluate and segment keep none unless given --cache-dir): one folder, so each reuses the others' work
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "spdsegment" / "embeddings"


@dataclass
class SliceEmbedding:
    features: object  # torch.Tensor 1x256x64x64 on the CPU
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    key: str = ""  # the cache key it was stored under: decoded masks are cached against it


class CorruptCacheFile(ValueError):
    pass


def _valid(data, key: str) -> SliceEmbedding:
    """The embedding in a loaded cache file, or CorruptCacheFile when it is not one of ours."""
    import torch

    if not isinstance(data, dict) or not {"features", "original_size", "input_size"} <= set(data):
        raise CorruptCacheFile("not an SPDSegment embedding file")
    if data.get("key", key) != key:
        raise CorruptCacheFile(f"the file holds the embedding of another slice ({data.get('key')})")
    features = data["features"]
    if not isinstance(features, torch.Tensor) or features.ndim != 4 or not torch.isfinite(features).all():
        raise CorruptCacheFile("its features are not a finite 4-D tensor")
    sizes = [tuple(int(v) for v in data[k]) for k in ("original_size", "input_size")]
    if any(len(s) != 2 for s in sizes):
        raise CorruptCacheFile("its image sizes are malformed")
    return SliceEmbedding(features, sizes[0], sizes[1], key)


class EmbeddingCache:
    """In-memory LRU (``max_items`` slices) with an optional on-disk layer in ``folder``."""

    def __init__(self, max_items: int = 1024, folder: str | Path | None = None) -> None:
        self.max_items = max_items
        self.folder = Path(folder) if folder else None
        self._items: OrderedDict[str, SliceEmbedding] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.rejected = 0  # cache files found unusable

    @staticmethod
    def key(identity: str, slice_u8: np.ndarray) -> str:
        digest = hashlib.sha1(np.ascontiguousarray(slice_u8).tobytes())
        digest.update(repr(slice_u8.shape).encode())
        return f"{identity.replace(':', '-')}-{digest.hexdigest()}"

    def _load(self, key: str) -> SliceEmbedding | None:
        import torch

        path = self.folder / f"{key}.pt"
        try:
            return _valid(torch.load(path, map_location="cpu", weights_only=True), key)
        except Exception as exc:  # noqa: BLE001  truncated zip, pickle error, foreign content: all mean "recompute"
            log.warning("embedding cache file %s is unusable (%s: %s); it is deleted and recomputed", path,
                        type(exc).__name__, str(exc).splitlines()[0][:160] if str(exc) else "")
            path.unlink(missing_ok=True)
            self.rejected += 1
            return None

    def get(self, key: str) -> SliceEmbedding | None:
        item = self._items.get(key)
        if item is None and self.folder is not None and (self.folder / f"{key}.pt").is_file():
            item = self._load(key)
            if item is not None:
                self._items[key] = item
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: str, item: SliceEmbedding) -> None:
        item.key = key
        self._items[key] = item
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        if self.folder is not None:
            import torch

            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f"{key}.pt.{os.getpid()}.tmp"  # private to this process
            torch.save({"features": item.features, "original_size": list(item.original_size),
                        "input_size": list(item.input_size), "key": key}, tmp)
            tmp.replace(self.folder / f"{key}.pt")  # atomic on one file system

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


class DecodeCache:
    """LRU of decoded masks (bit-packed) by (embedding key, decoder version, prompt): the same box on the
    same slice is decoded once per process, in the prior, the final pass and a re-run after an edit."""

    def __init__(self, max_items: int = 8192) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple, tuple[np.ndarray, tuple[int, int], float]] = OrderedDict()
        self.hits = 0

    def get(self, key: tuple):
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        self.hits += 1
        packed, shape, score = item
        return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool), score

    def __contains__(self, key: tuple) -> bool:
        return key in self._items

    def put(self, key: tuple, mask: np.ndarray, score: float) -> None:
        self._items[key] = (np.packbits(mask.ravel()), mask.shape, score)
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
