"""GPU figures for SPDSegment, printed as figures and as ratios measured in one run on one card.

A GPU machine often lacks SimpleITK and the network, so the demo's inputs travel as one bundle that
a machine with the project installed writes first:

    .venv/bin/python benchmarks/bench_gpu.py --prepare cta_bundle.npz     # here: volume, label, noisy curve
    python3 benchmarks/bench_gpu.py --bundle cta_bundle.npz               # on the CUDA machine

Without ``--bundle`` the script reads the sample data itself (SimpleITK needed). It prints:

1. the image encoder in slices/s on all slices of the demo CTA: fp32, fp16 and bf16 autocast, batch
   sizes 1, 8 and 32;
2. what autocast changes: the largest embedding difference to fp32 and the Dice between the masks that
   the fp32 and the autocast embeddings decode for the same boxes;
3. SPD end to end vs plain SAM on the same slices (plain: one box around each slice's raw point
   cluster, no prior), from empty caches, under the default autocast (fp16); then the tracker's
   batched decodes (a slice's boxes in one call) against one box per call;
4. the demo on CUDA: raw and SPD, DSC against the label and seconds, under fp16 and under fp32 (the CPU
   demo's figures are in the README: the DSC should agree within about a point). As in the demo, raw
   runs first and pays for encoding and the prior; SPD reuses both, so its seconds are the rest.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from SPDSegmentLib.evaluation.metrics import evaluate
from SPDSegmentLib.method.pipeline import SegmentParams, segment
from SPDSegmentLib.method.prompts import Centerline, slice_prompts
from SPDSegmentLib.method.saliency import load_prior
from SPDSegmentLib.method.windowing import volume_window
from SPDSegmentLib.sam.backend import load_backend
from SPDSegmentLib.volume import Volume

PRESET = "ct-angio"


def _read_sample() -> tuple[Volume, np.ndarray, Centerline, dict[int, list]]:
    from SPDSegmentLib.evaluation import sample_data
    from SPDSegmentLib.evaluation.harness import raw_point_boxes
    from SPDSegmentLib.evaluation.noise import simulate
    from SPDSegmentLib.evaluation.skeleton import centerline_from_label
    from SPDSegmentLib.io import read_label, read_volume

    volume = read_volume(sample_data.path("cta/image.nii.gz"), "cta")
    label = read_label(sample_data.path("cta/aorta.nii.gz"), volume)
    noisy = simulate(centerline_from_label(volume, label), volume, label, "clinical", seed=0).centerline
    return volume, label, noisy, raw_point_boxes(volume, slice_prompts(noisy, volume))


def prepare(path: Path) -> None:
    volume, label, noisy, boxes = _read_sample()
    flat = [(t, *b) for t, bs in boxes.items() for b in bs]
    np.savez_compressed(path, array=volume.array, ijk_to_ras=volume.ijk_to_ras, label=label,
                        points=noisy.points_ras, ordered=noisy.ordered, plain_boxes=np.array(flat, dtype=float))
    print(f"wrote {path}: volume {volume.array.shape}, {len(noisy.points_ras)} curve points, {len(flat)} plain boxes")


def load_bundle(path: Path) -> tuple[Volume, np.ndarray, Centerline, dict[int, list]]:
    data = np.load(path)
    volume = Volume(data["array"], data["ijk_to_ras"], "cta", "CT")
    boxes: dict[int, list] = {}
    for t, *box in data["plain_boxes"]:
        boxes.setdefault(int(t), []).append(tuple(box))
    return volume, data["label"], Centerline(data["points"], ordered=bool(data["ordered"]), name="bench"), boxes


def _backend(mode: str):
    os.environ["SPDSEGMENT_AUTOCAST"] = mode
    return load_backend("litemedsam", device="cuda")


def encoder(slices: list[np.ndarray], rounds: int = 3) -> None:
    """Best of ``rounds`` interleaved passes per setting (the first pass of a setting pays warm-ups)."""
    import torch

    backend = _backend("off")
    start = time.perf_counter()
    for s in slices:
        backend.encoder_input(s)
    prep = (time.perf_counter() - start) / len(slices)
    best: dict[tuple[str, int], float] = {}
    for _ in range(rounds):
        for mode in ("off", "fp16", "bf16"):
            os.environ["SPDSEGMENT_AUTOCAST"] = mode
            for batch in (1, 8, 32):
                backend.start_cold()
                torch.cuda.synchronize()
                start = time.perf_counter()
                backend.embed_many(slices, batch_size=batch)
                torch.cuda.synchronize()
                took = time.perf_counter() - start
                best[mode, batch] = min(best.get((mode, batch), took), took)
    print(f"1. encoder input preparation on the CPU (resize, normalise, copy to the GPU): {1000 * prep:.1f} ms "
          f"per slice, included below")
    for (mode, batch), took in best.items():
        print(f"1. encoder {'fp32' if mode == 'off' else mode}, batch {batch:>2}: {len(slices) / took:7.1f} slices/s "
              f"(best of {rounds})")


def autocast_effect(volume: Volume, slices: list[np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    h, w = volume.slice_shape
    picks = slices[40:120:4]
    boxes = []
    for _ in range(6):
        r, c, half = rng.uniform(20, h - 20), rng.uniform(20, w - 20), rng.uniform(5, 30)
        boxes.append((r - half, c - half, r + half, c + half))
    boxes = np.array(boxes)
    backend = _backend("off")

    def embed(mode: str, s: np.ndarray):
        os.environ["SPDSEGMENT_AUTOCAST"] = mode  # read at each call: set it right before
        return backend.embed_many([s])[0]

    for mode in ("fp16", "bf16"):
        diffs, dices, same = [], [], 0
        for s in picks:
            a, b = embed("off", s), embed(mode, s)
            diffs.append(float((a.features.float() - b.features.float()).abs().max())
                         / float(a.features.float().abs().max()))
            ma, _ = backend.decode_boxes(a, boxes)
            mb, _ = backend.decode_boxes(b, boxes)
            for x, y in zip(ma, mb):
                same += int(np.array_equal(x, y))
                denom = x.sum() + y.sum()
                dices.append(1.0 if denom == 0 else 2 * (x & y).sum() / denom)
        n = len(dices)
        print(f"2. {mode} vs fp32 on {len(picks)} slices: max |embedding difference| / max |embedding| "
              f"{max(diffs):.1e}; {n} box masks: identical {same}/{n}, mean Dice {np.mean(dices):.4f}, "
              f"min Dice {np.min(dices):.4f}")


def spd_vs_plain(volume: Volume, centerline: Centerline, plain_boxes: dict[int, list]) -> None:
    import torch

    backend = _backend("fp16")
    window = volume_window(volume, PRESET)
    src = volume.slices()
    segment(volume, centerline, backend, load_prior("sam-track", backend), SegmentParams(intensity_preset=PRESET))
    backend.start_cold()
    torch.cuda.synchronize()
    start = time.perf_counter()
    # plain SAM, as the CPU benchmark's part 3: one box per raw point cluster, every slice with points
    embs = backend.embed_many([window.apply(src[t]) for t in plain_boxes])
    for emb, boxes in zip(embs, plain_boxes.values()):
        backend.decode_boxes(emb, np.array(boxes, dtype=float))
    torch.cuda.synchronize()
    plain = time.perf_counter() - start
    backend.start_cold()
    calls = {"decode": [0, 0.0], "decode_boxes": [0, 0.0]}
    for name in calls:
        original = getattr(backend, name)

        def timed(*a, _original=original, _name=name, **k):
            t0 = time.perf_counter()
            out = _original(*a, **k)
            calls[_name][0] += 1
            calls[_name][1] += time.perf_counter() - t0
            return out

        setattr(backend, name, timed)
    start = time.perf_counter()
    result = segment(volume, centerline, backend, load_prior("sam-track", backend),
                     SegmentParams(intensity_preset=PRESET))
    torch.cuda.synchronize()
    total = time.perf_counter() - start
    t = result.timings
    print(f"3. SPD on {len(result.processed_slices)} slices: encode {t['encode']:.2f} s, prior {t['saliency']:.2f} s, "
          f"decode {t['decode']:.2f} s, total {total:.2f} s; plain SAM {plain:.2f} s on {len(plain_boxes)} slices "
          f"-> SPD / plain = {total / plain:.2f}x")
    print("3. SAM decoder calls in that SPD run: " + ", ".join(
        f"{name} {n} calls, {1000 * s / max(n, 1):.1f} ms each, {s:.2f} s" for name, (n, s) in calls.items()))
    for name in calls:
        delattr(backend, name)  # the instance's timing wrappers off again
    batching_ab(backend, volume, centerline)


def batching_ab(backend, volume: Volume, centerline: Centerline, pairs: int = 2) -> None:
    """The tracker's batched decodes (a slice's boxes in one call) against one box per call, the way
    it decoded before: alternating runs from empty caches, the median of each."""
    import torch

    runs: dict[str, list[tuple[float, float]]] = {"batched": [], "one box per call": []}
    for mode in list(runs) * pairs:
        backend.batch_decodes = mode == "batched"
        backend.start_cold()
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = segment(volume, centerline, backend, load_prior("sam-track", backend),
                         SegmentParams(intensity_preset=PRESET))
        torch.cuda.synchronize()
        runs[mode].append((time.perf_counter() - start, result.timings["saliency"]))
    backend.batch_decodes = True
    (bt, bp), (ot, op) = (np.median(np.array(runs[m]), axis=0) for m in runs)
    print(f"3. tracker decodes batched per slice vs one box per call (median of {pairs} alternating pairs): "
          f"SPD total {bt:.2f} s vs {ot:.2f} s, prior {bp:.2f} s vs {op:.2f} s -> {ot / bt:.2f}x faster end to end")


def demo(volume: Volume, label: np.ndarray, centerline: Centerline) -> None:
    import torch

    spacing = (volume.slice_spacing, *volume.in_plane_spacing)
    ref = volume.with_array(label).slices()
    for mode in ("fp16", "off"):
        backend = _backend(mode)
        saliency = None
        for method in ("raw", "spd"):
            torch.cuda.synchronize()
            start = time.perf_counter()
            result = segment(volume, centerline, backend, load_prior("sam-track", backend),
                             SegmentParams(method=method, intensity_preset=PRESET), saliency=saliency)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            saliency = result.saliency_maps
            scores = evaluate(volume.with_array(result.mask).slices(), ref, spacing)
            print(f"4. demo on CUDA, {'fp32' if mode == 'off' else mode}: {method:<3} DSC {scores['dsc']:.3f} "
                  f"HD95 {scores['hd95_mm']:.2f} mm, {seconds:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", type=Path, help="write the bundle the GPU machine reads, and stop")
    ap.add_argument("--bundle", type=Path, help="read the demo's inputs from this bundle instead of the sample data")
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (the CPU figures come from bench_speed.py)")
        return
    import logging

    logging.disable(logging.WARNING)
    volume, label, centerline, plain_boxes = load_bundle(args.bundle) if args.bundle else _read_sample()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; CTA {volume.array.shape[::-1]} voxels")
    window = volume_window(volume, PRESET)
    slices = [window.apply(s) for s in volume.slices()]
    encoder(slices)
    autocast_effect(volume, slices)
    spd_vs_plain(volume, centerline, plain_boxes)
    demo(volume, label, centerline)


if __name__ == "__main__":
    main()
