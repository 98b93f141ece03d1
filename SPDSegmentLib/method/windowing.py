"""Per-volume intensity windowing to 8-bit, as SAM-family encoders expect.

CT uses fixed Hounsfield windows (the same window on every slice, so neighbouring slices stay
comparable); MRI has no absolute scale, so its window comes from the volume's own percentiles.
The window is computed once per volume, never per slice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..volume import Volume

# (level, width) in HU
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "ct-abdomen": (40.0, 400.0),
    "ct-angio": (300.0, 800.0),
    "ct-soft": (50.0, 350.0),
    "ct-lung": (-600.0, 1500.0),
    "ct-bone": (400.0, 1800.0),
}
PRESETS = ("auto", *CT_WINDOWS, "mri")


@dataclass(frozen=True)
class Window:
    low: float
    high: float
    preset: str

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Min-max scale the window to 0..255 (uint8), clipping outside values."""
        scaled = (np.asarray(values, dtype=np.float32) - self.low) / max(self.high - self.low, 1e-6)
        return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def volume_window(volume: Volume, preset: str = "auto") -> Window:
    """Window for ``volume``. ``auto``: CT -> ``ct-abdomen``, MR -> ``mri`` (0.5-99.5 percentiles)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown intensity preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if preset == "auto":
        preset = "ct-abdomen" if volume.guessed_modality() == "CT" else "mri"
    if preset == "mri":
        sample = volume.array[:: max(1, volume.array.shape[0] // 64)]
        low, high = np.percentile(sample, [0.5, 99.5])
        if high <= low:
            high = low + 1.0
        return Window(float(low), float(high), preset)
    level, width = CT_WINDOWS[preset]
    return Window(level - width / 2, level + width / 2, preset)
