"""Per-stage timing of one SPD run vs plain raw-prompt SAM on the CTA sample, printed as figures and
ratios from the same process (this machine is noisy: compare ratios, not absolute seconds).

    .venv/bin/python benchmarks/bench_stages.py [--slices 40] [--device auto]

Stages: encode (SAM image encoder), saliency (the prior; sam-votes decodes SAM masks), CPD, decode
(SAM mask decoder for the final masks). Embedding caches are cleared between methods so both pay
for their own encoding; a second SPD run with moved prompts shows the cached re-run cost.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from SPDSegmentLib import sample_data  # noqa: E402
from SPDSegmentLib.method.prompts import Centerline  # noqa: E402
from SPDSegmentLib.io import read_label, read_volume  # noqa: E402
from SPDSegmentLib.evaluation.noise import simulate  # noqa: E402
from SPDSegmentLib.method.pipeline import SegmentParams, segment  # noqa: E402
from SPDSegmentLib.method.saliency import load_prior  # noqa: E402
from SPDSegmentLib.sam.backend import load_backend  # noqa: E402
from SPDSegmentLib.evaluation.skeleton import centerline_from_label  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=40, help="axial slices of the aorta to segment")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prior", default="sam-votes")
    args = ap.parse_args()
    volume = read_volume(sample_data.path("cta/image.nii.gz"))
    label = read_label(sample_data.path("cta/aorta.nii.gz"), volume)
    noisy = simulate(centerline_from_label(volume, label), volume, label, "clinical", seed=0).centerline
    src = volume.ras_to_src(noisy.points_ras)
    lo = 60
    keep = (src[:, 0] >= lo) & (src[:, 0] < lo + args.slices)
    centerline = Centerline(noisy.points_ras[keep], ordered=False, name="bench")
    backend = load_backend("litemedsam", device=args.device)
    rows = {}
    for label_, method, moved in (("raw SAM", "raw", False), ("SPD", "spd", False), ("SPD re-run, moved", "spd", True)):
        if not moved:
            backend.cache.clear()
        cl = Centerline(centerline.points_ras + ([0.8, -0.5, 0] if moved else 0), ordered=False)
        prior = load_prior(args.prior, backend)
        start = time.perf_counter()
        result = segment(volume, cl, backend, prior, SegmentParams(method=method, intensity_preset="ct-angio"))
        total = time.perf_counter() - start
        rows[label_] = {**result.timings, "total": total, "encodes": result.encode_calls}
    print(f"device {backend.device}; {args.slices} slices of the CTA aorta; prior {args.prior}")
    stages = ["encode", "saliency", "cpd", "decode", "total"]
    print(f"{'run':<20}" + "".join(f"{s:>10}" for s in stages) + f"{'encodes':>9}")
    for name, r in rows.items():
        print(f"{name:<20}" + "".join(f"{r[s]:10.2f}" for s in stages) + f"{r['encodes']:9d}")
    base = rows["raw SAM"]
    print(f"\nSPD / raw total time: {rows['SPD']['total'] / base['total']:.2f}x; "
          f"cached SPD re-run / raw: {rows['SPD re-run, moved']['total'] / base['total']:.2f}x")
    print(f"per slice: raw {base['total'] / args.slices:.2f} s, SPD {rows['SPD']['total'] / args.slices:.2f} s")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
