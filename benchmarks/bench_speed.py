"""Speed and memory of SPDSegment, printed as figures and as ratios measured in one run (this kind of
machine is noisy: compare the ratios, not absolute seconds across runs).

    .venv/bin/python benchmarks/bench_speed.py [--slices 40] [--device auto] [--skip-rss] [--skip-batch]

1. image encoder: torch eager vs ONNX Runtime, per slice, and the largest embedding difference;
   the box-prompted mask decoder the same way, and how many masks are identical;
2. one SPD run by stage (encode, prior, CPD, decode) and the prior's cost next to the encoder's;
3. SPD end to end vs plain SAM on the same slices (plain: one box around each slice's raw point
   cluster, no prior), both starting from empty caches, the median of 3 alternating pairs (2. and 4.
   are from the median pair's SPD run);
4. the 3-D continuity step itself (the tracker's own work, SAM calls excluded), per slice; and the
   appearance gate that trims its maps on MRI, per slice of the MR sample (no SAM involved);
5. a re-run after one point moves (what "update on edit" does), in total and per affected slice;
6. peak resident memory of a run on a 512 x 512 x 300 CT (the DICOM sample resampled, here only);
7. segment-batch on Dask with 2 workers vs a serial run of the same studies;
8. GPU figures: see benchmarks/bench_gpu.py.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from SPDSegmentLib.evaluation import sample_data
from SPDSegmentLib.evaluation.noise import simulate
from SPDSegmentLib.evaluation.skeleton import centerline_from_label
from SPDSegmentLib.io import read_label, read_volume
from SPDSegmentLib.method.pipeline import SegmentParams, segment
from SPDSegmentLib.method.prompts import Centerline, slice_prompts
from SPDSegmentLib.method.saliency import load_prior
from SPDSegmentLib.method.windowing import volume_window
from SPDSegmentLib.sam.backend import load_backend
from SPDSegmentLib.sam.embedding_cache import DecodeCache


def _cta_run(slices: int):
    volume = read_volume(sample_data.path("cta/image.nii.gz"), "cta")
    label = read_label(sample_data.path("cta/aorta.nii.gz"), volume)
    noisy = simulate(centerline_from_label(volume, label), volume, label, "clinical", seed=0).centerline
    src = volume.ras_to_src(noisy.points_ras)
    keep = (src[:, 0] >= 60) & (src[:, 0] < 60 + slices)
    return volume, Centerline(noisy.points_ras[keep], ordered=False, name="bench")


def encoder(volume, device: str, n: int = 12) -> None:
    if device != "cpu":
        print(f"1. ONNX Runtime runs on the CPU only; on {device} torch runs SAM (see 8.)")
        return
    window = volume_window(volume, "ct-angio")
    slices = [window.apply(volume.slices()[t]) for t in range(60, 60 + n)]
    times, outs, backends = {}, {}, {}
    for runtime in ("torch", "onnx"):
        backend = backends[runtime] = load_backend("litemedsam", device=device, runtime=runtime)
        backend.embed(slices[0])  # warm-up (and the one-off ONNX export)
        backend.start_cold()
        start = time.perf_counter()
        outs[runtime] = [backend.embed(s).features for s in slices]
        times[runtime] = (time.perf_counter() - start) / n
    diff = max(float((a - b).abs().max()) for a, b in zip(outs["torch"], outs["onnx"]))
    print(f"1. encoder per slice: torch {times['torch']:.3f} s, onnx {times['onnx']:.3f} s -> onnx is "
          f"{times['torch'] / times['onnx']:.2f}x faster; max |embedding difference| {diff:.1e}")
    decoder(volume, slices, backends["torch"], backends["onnx"])


def decoder(volume, slices, torch_backend, onnx_backend) -> None:
    """Box decodes of the prior's kind (several sizes around points of the slice), torch vs ONNX Runtime."""
    rng = np.random.default_rng(0)
    h, w = volume.slice_shape
    boxes = []
    for _ in range(6):
        r, c, half = rng.uniform(60, h - 60), rng.uniform(60, w - 60), rng.uniform(5, 50)
        boxes.append((r - half, c - half, r + half, c + half))
    times, masks = {"torch": 0.0, "onnx": 0.0}, {"torch": [], "onnx": []}
    for s in slices:
        emb = onnx_backend.embed(s)
        for name, backend in (("torch", torch_backend), ("onnx", onnx_backend)):
            backend.decode(emb, None, boxes[0])  # warm-up
            backend.decoded = DecodeCache()
            start = time.perf_counter()
            masks[name] += [backend.decode(emb, None, b).mask for b in boxes]
            times[name] += time.perf_counter() - start
    n = len(masks["torch"])
    same = sum(np.array_equal(a, b) for a, b in zip(masks["torch"], masks["onnx"]))
    print(f"1b. box decode: torch {1000 * times['torch'] / n:.1f} ms, onnx {1000 * times['onnx'] / n:.1f} ms -> "
          f"onnx is {times['torch'] / times['onnx']:.2f}x faster; identical masks {same}/{n}")


def stages_and_plain(volume, centerline, device: str, pairs: int = 3) -> None:
    """Parts 2-5. Plain SAM and SPD run alternately ``pairs`` times, each from empty caches, and the
    ratio is the median of the pairs' ratios: a slow spell of this shared machine then hits one pair,
    not the figure."""
    from SPDSegmentLib.evaluation.harness import box_prompts_masks, raw_point_boxes

    backend = load_backend("litemedsam", device=device)
    params = SegmentParams(method="spd", intensity_preset="ct-angio")
    decode_time = {"s": 0.0}
    original = backend.decode

    def timed_decode(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        decode_time["s"] += time.perf_counter() - t0
        return out

    runs = []
    for _ in range(pairs):
        backend.start_cold()
        backend.decode = original
        start = time.perf_counter()
        boxes = raw_point_boxes(volume, slice_prompts(centerline, volume))
        box_prompts_masks(volume, backend, "ct-angio", boxes)
        plain = time.perf_counter() - start
        backend.start_cold()
        decode_time["s"] = 0.0
        backend.decode = timed_decode
        start = time.perf_counter()
        result = segment(volume, centerline, backend, load_prior("sam-track", backend), params)
        total = time.perf_counter() - start
        runs.append((total / plain, total, plain, result, decode_time["s"]))
    backend.decode = original
    ratio, total, plain, result, decoding = sorted(runs, key=lambda r: r[0])[len(runs) // 2]  # the median pair
    t = result.timings
    prior_sam = t["saliency"] - (decoding - t["decode"])  # the tracker's own work, SAM excluded
    n = len(result.processed_slices)
    print(f"2. SPD ({n} slices, runtime {backend.runtime}): encode {t['encode']:.1f} s, prior {t['saliency']:.1f} s, "
          f"CPD {1000 * t['cpd']:.1f} ms, decode {t['decode']:.1f} s, total {total:.1f} s; prior / encode = "
          f"{t['saliency'] / max(t['encode'], 1e-9):.2f}x")
    print(f"3. SPD / plain SAM (one box per raw point cluster, no prior) = {ratio:.2f}x "
          f"({total:.1f} s vs {plain:.1f} s; the median of {pairs} alternating pairs, whose ratios were "
          f"{', '.join(f'{r[0]:.2f}' for r in runs)})")
    print(f"4. the continuity step without its SAM calls: {1000 * max(prior_sam, 0) / n:.1f} ms per slice "
          f"(encoder: {1000 * t['encode'] / max(result.encode_calls, 1):.0f} ms per slice)")
    moved = centerline.points_ras.copy()
    src = volume.ras_to_src(moved)
    i = int(np.argmin(np.abs(src[:, 0] - np.median(src[:, 0]))))
    moved[i] += [5.0, -4.0, 0.0]  # a drag of about 6 mm inside the aorta
    before = backend.decode_calls
    start = time.perf_counter()
    again = segment(volume, Centerline(moved, centerline.ordered), backend, load_prior("sam-track", backend), params)
    rerun = time.perf_counter() - start
    affected = sum(1 for t in again.processed_slices if not np.array_equal(
        volume.with_array(again.mask).slices()[t], volume.with_array(result.mask).slices()[t]))
    window = 2 * params.context + 1  # the slices whose CPD window holds the moved point
    print(f"5. re-run after one point moved: {rerun:.2f} s in total, {again.encode_calls} slices encoded, "
          f"{backend.decode_calls - before} new SAM decodes, {affected} slices changed; "
          f"{rerun / window:.3f} s per slice of the moved point's window ({window} slices)")


def appearance_gate(repeats: int = 5) -> None:
    """The gate's own cost on the MR sample: the aorta's label slices stand in for the tracker's maps
    (the gate's work, a smoothing and two labellings per slice, does not depend on what the map holds)."""
    from SPDSegmentLib.method.appearance_gate import AppearanceGate, gate_maps

    volume = read_volume(sample_data.path("abdomen_mr/image.nii.gz"), "abdomen_mr")
    value = next(v for v, n in sample_data.class_map("abdomen_mr").items() if n == "aorta")
    label = (read_volume(sample_data.path("abdomen_mr/labels.nii.gz")).array == value).astype(np.uint8)
    prompts = slice_prompts(centerline_from_label(volume, label), volume)
    ref = volume.with_array(label).slices()
    maps = {t: ref[t].astype(np.float32) for t in range(len(ref)) if ref[t].any()}
    slices = volume.slices()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        gate_maps(maps, slices, prompts, AppearanceGate())
        times.append(time.perf_counter() - start)
    print(f"4b. the appearance gate (MRI): {1000 * float(np.median(times)) / len(maps):.2f} ms per slice "
          f"({len(maps)} slices of {slices.shape[1]} x {slices.shape[2]}, the median of {repeats})")


RSS_CHILD = r"""
import json, resource, sys, numpy as np, SimpleITK as sitk
from SPDSegmentLib.evaluation import sample_data
from SPDSegmentLib.io import read_volume, read_label, volume_to_sitk
from SPDSegmentLib.evaluation.skeleton import centerline_from_label
from SPDSegmentLib.method.pipeline import segment, SegmentParams
from SPDSegmentLib.method.saliency import load_prior
from SPDSegmentLib.sam.backend import load_backend
from SPDSegmentLib.volume import Volume
small = read_volume(sample_data.path("abdomen_ct_dicom/image"))
image = volume_to_sitk(small)
size = [512, 512, 300]
spacing = [image.GetSpacing()[0], image.GetSpacing()[1], image.GetSpacing()[2] * image.GetSize()[2] / 300]
big = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                    image.GetDirection(), -1000)
array = sitk.GetArrayFromImage(big).astype(np.int16)
volume = Volume(array, small.ijk_to_ras @ np.diag([1, 1, spacing[2] / image.GetSpacing()[2], 1]), "ct512")
label = read_label(sample_data.path("abdomen_ct_dicom/labels.nii.gz"), volume, label_value=52)
centerline = centerline_from_label(volume, label)
backend = load_backend("litemedsam", device=sys.argv[1])
result = segment(volume, centerline, backend, load_prior("sam-track", backend),
                 SegmentParams(intensity_preset="ct-abdomen"))
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"slices": len(result.processed_slices), "rss_mb": rss_mb}))
"""


def peak_rss(device: str) -> None:
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, device], capture_output=True, text=True, check=False)
    if out.returncode:
        print("6. peak RSS: the run failed:", out.stderr.strip().splitlines()[-1])
        return
    data = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"6. peak resident memory, 512 x 512 x 300 CT, {data['slices']} slices processed: {data['rss_mb']:.0f} MiB")


def batch(device: str) -> None:
    from SPDSegmentLib.evaluation.cases import build_sample_cases
    from SPDSegmentLib.frontends.batch import EngineOptions, run_batch
    from SPDSegmentLib.io import write_centerline

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        built = tmp / "built"
        build_sample_cases(built, log=lambda *a: None)
        studies = tmp / "studies"
        for name in ("abdomen_ct_aorta", "abdomen_ct_inferior_vena_cava", "abdomen_mr_aorta", "abdomen_mr_colon"):
            case = built / name
            (studies / name).mkdir(parents=True)
            for f in case.iterdir():
                if f.name.startswith("image"):
                    (studies / name / f.name).write_bytes(f.read_bytes())
            volume = read_volume(case / "image.nii.gz")
            label = read_label(case / "label.nii.gz", volume)
            noisy = simulate(centerline_from_label(volume, label), volume, label, "clinical", seed=0)
            write_centerline(noisy.centerline, studies / name / "centerline.mrk.json")
            (studies / name / "case.json").write_text((case / "case.json").read_text())
        options = EngineOptions(device=device, threads=1)
        start = time.perf_counter()
        run_batch(studies, tmp / "serial", options, serial=True, log=lambda *a: None)
        serial = time.perf_counter() - start
        start = time.perf_counter()
        run_batch(studies, tmp / "dask", options, workers=2, log=lambda *a: None)
        parallel = time.perf_counter() - start
        same = all((tmp / "serial" / s / "segmentation.seg.nrrd").read_bytes()
                   == (tmp / "dask" / s / "segmentation.seg.nrrd").read_bytes() for s in
                   [p.name for p in studies.iterdir()])
    print(f"7. segment-batch, 4 studies: serial {serial:.1f} s, Dask 2 workers {parallel:.1f} s -> speed-up "
          f"{serial / parallel:.2f}x (includes starting the cluster and loading the model in each worker); "
          f"outputs byte-identical: {same}")


def gpu() -> None:
    import torch

    where = f"CUDA device {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no CUDA device here"
    print(f"8. GPU ({where}): benchmarks/bench_gpu.py prints the encoder's slices/s in fp32, fp16 and bf16, "
          "what autocast changes in the masks, and SPD vs plain SAM on CUDA")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=40, help="axial slices of the CTA aorta for parts 2-5")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-batch", action="store_true")
    args = ap.parse_args()
    import logging

    logging.disable(logging.WARNING)
    volume, centerline = _cta_run(args.slices)
    encoder(volume, args.device)
    stages_and_plain(volume, centerline, args.device)
    appearance_gate()
    if not args.skip_rss:
        peak_rss(args.device)
    if not args.skip_batch:
        batch(args.device)
    gpu()
    print(f"this process's peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
