"""Evaluation harness: every method on every case and noise severity, same frozen SAM, same prompts.

Methods (only the prompt set or the prior changes; LiteMedSAM, windowing and slices are shared):
  raw              all centerline points of each slice, rendered like SPD's (boxes sized by the prior)
  random           a seeded random half of the raw points, same rendering and the same prior maps
  box              MedSAM-style: one box around each slice's raw points plus a margin (no prior)
  local            CPD local validation only
  spd-votes        CPD with the window-voting prior (``sam-votes``, the previous release's SPD)
  spd-continuity   + 3-D continuity: the ``sam-track`` prior, with fixed seed boxes and no growth
  spd-propagation  + propagation of the tracked structure into slices without trusted points
  spd-extent       + extent from the image (seed sizes chosen by SAM's confidence, and growth)
  spd-gate         + the appearance gate on MRI (the prior trimmed to tissue like the points')
  spd              + the leak limit (a slice's mask far larger than its neighbours' is decoded again from
                   point-sized boxes): the full method
  spd+psc          SPD with the inference-time slice-consistency step
  spd-<prior>  SPD with the second prior: a trained prior (file or shipped name) when given, else the
               intensity prior. A trained prior runs only on cases of the structure it was trained for,
               and each case is tagged with its role for that prior (train / validation / held-out).
  oracle-prior upper bound, never a result: SPD with the label itself as the saliency map (the best
               any prior could do), everything else unchanged
  label-box    upper bound: a box around each label component (+5 px) on every label slice
Embeddings are cached in the backend, so each slice of a case is encoded once for all methods and
severities; the prior maps are computed once per case and severity and shared by the methods.
"""
from __future__ import annotations

import csv
import json
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io import read_label, read_markups, read_volume
from ..method.pipeline import NothingToSegment, SegmentParams, segment
from ..method.prompts import Centerline, slice_prompts
from ..method.saliency import TrackPrior, load_prior
from ..method.windowing import volume_window
from .cases import Case, find_cases
from .metrics import evaluate
from .noise import SEVERITIES, simulate
from .skeleton import centerline_from_label

METHODS = ("raw", "random", "box", "local", "spd-votes", "spd-continuity", "spd-propagation", "spd-extent", "spd-gate",
           "spd", "spd+psc", "spd-prior2", "oracle-prior", "label-box")


@dataclass(frozen=True)
class PromptMethod:
    """A method that runs the pipeline: its CPD mode, its prior (None: the run's configured one) and switches."""

    cpd: str
    prior: str | None = None
    propagate: bool = True
    consistency: bool = False
    random_half: bool = False
    leak_limit: bool = True  # the final pass's (SegmentParams.leak_limit); off in the ablation rows before spd


PROMPT_METHODS = {
    "raw": PromptMethod("raw", propagate=False, leak_limit=False),  # the pipeline never limits raw prompts anyway
    "random": PromptMethod("raw", propagate=False, random_half=True, leak_limit=False),
    "local": PromptMethod("local", propagate=False, leak_limit=False),
    "spd-votes": PromptMethod("spd", "sam-votes", propagate=False, leak_limit=False),
    "spd-continuity": PromptMethod("spd", "sam-track/fixed-boxes", propagate=False, leak_limit=False),
    "spd-propagation": PromptMethod("spd", "sam-track/fixed-boxes", leak_limit=False),
    "spd-extent": PromptMethod("spd", "sam-track-ungated", leak_limit=False),
    "spd-gate": PromptMethod("spd", leak_limit=False),
    "spd": PromptMethod("spd"),
    "spd+psc": PromptMethod("spd", consistency=True),
}


def load_method_prior(spec: str, backend):
    """A prior by name, plus the ablation variant ``sam-track/fixed-boxes`` (no extent from the image,
    no appearance gate)."""
    if spec == "sam-track/fixed-boxes":
        from ..method.continuity import TrackingParams
        from ..method.saliency import TrackPrior

        return TrackPrior(params=TrackingParams(extent=False), gate=None)
    return load_prior(spec, backend)
UPPER_BOUNDS = ("oracle-prior", "label-box")  # use the label: bounds to judge methods by, never results
COLUMNS = ("case", "method", "severity", "dsc", "iou", "hd95_mm", "asd_mm", "volumetric_dsc", "slice_dsc", "seconds",
           "prior_dice", "prior_auc")


@dataclass
class EvalConfig:
    methods: tuple[str, ...] = METHODS
    severities: tuple[str, ...] = ("clinical",)
    seed: int = 0
    label_value: int | None = None
    prior: str = "sam-track"
    second_prior: str | None = None  # a trained prior.pt; None -> the intensity prior
    tau: float | None = None
    context: int = 2
    thick_context: int | None = None  # the borrowing window where the structure is thick (SegmentParams)
    preset: str = "auto"  # intensity window of cases whose case.json names none (a given centerline's folder)
    all_panels: bool = False  # overlay panels of every severity, not only the one the report shows


def box_prompts_masks(volume, backend, preset: str, boxes_per_slice: dict[int, list]) -> np.ndarray:
    """Plain SAM from given boxes, no prior and no CPD (the ``box`` and ``label-box`` methods, and the
    benchmarks' plain-SAM baseline): the union of each slice's box masks, in the volume's array order."""
    window = volume_window(volume, preset)
    src = volume.slices()
    out = np.zeros((volume.num_slices, *volume.slice_shape), dtype=np.uint8)
    for t, boxes in boxes_per_slice.items():
        if not boxes:
            continue
        emb = backend.embed(window.apply(src[t]))
        masks, _ = backend.decode_boxes(emb, np.array(boxes, dtype=float))
        out[t] = masks.any(axis=0)
    return volume.to_array_order(out)


def raw_point_boxes(volume, prompts, margin_mm: float = 10.0) -> dict[int, list]:
    """MedSAM-style baseline: per slice, per crossing group, the points' bounding box + margin."""
    margin = margin_mm / np.asarray(volume.in_plane_spacing)
    rows, cols = volume.slice_shape
    out = {}
    for t, pts in prompts.items():
        boxes = []
        for g in sorted({p.group for p in pts}):
            rc = np.array([[p.row, p.col] for p in pts if p.group == g])
            r0, c0 = np.maximum(rc.min(0) - margin, 0)
            r1, c1 = np.minimum(rc.max(0) + margin, [rows - 1, cols - 1])
            boxes.append((r0, c0, r1, c1))
        out[t] = boxes
    return out


def _label_boxes(volume, label_src: np.ndarray, margin_px: int = 5) -> dict[int, list]:
    out = {}
    rows, cols = volume.slice_shape
    for t in range(len(label_src)):
        if not label_src[t].any():
            continue
        labelled, _n = ndimage.label(label_src[t])
        boxes = []
        for sl in ndimage.find_objects(labelled):
            boxes.append((max(sl[0].start - margin_px, 0), max(sl[1].start - margin_px, 0),
                          min(sl[0].stop - 1 + margin_px, rows - 1), min(sl[1].stop - 1 + margin_px, cols - 1)))
        out[t] = boxes
    return out


def _random_half(centerline: Centerline, seed: int) -> Centerline:
    rng = np.random.default_rng(seed + 7919)
    keep = rng.random(len(centerline.points_ras)) < 0.5
    keep[rng.integers(len(keep))] = True
    return replace(centerline, points_ras=centerline.points_ras[keep], name=centerline.name + "-random")


def prior_quality(saliency: dict[int, np.ndarray], label_src: np.ndarray, tau: float) -> dict[str, float]:
    """How well a prior's maps find the label on the slices the run processed: Dice of ``S > tau``
    and the ROC AUC of S as a voxel score (rank form: the chance that a random label voxel scores
    above a random background voxel). NaN when the slices hold no label or no background."""
    if not saliency:
        return {"prior_dice": float("nan"), "prior_auc": float("nan")}
    slices = sorted(saliency)
    scores = np.concatenate([saliency[t].ravel() for t in slices]).astype(np.float64)
    truth = np.concatenate([label_src[t].ravel() > 0 for t in slices])
    from scipy.stats import rankdata

    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        auc = float("nan")
    else:
        ranks = rankdata(scores)
        auc = float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    pred = scores > tau
    total = pred.sum() + truth.sum()
    return {"prior_dice": float(2 * (pred & truth).sum() / total) if total else 1.0, "prior_auc": auc}


def prior_role(prior, case: Case) -> str | None:
    """How a trained prior relates to a case: "train", "validation", "held-out", or None when the
    prior was trained for another structure (it is then not run on the case)."""
    meta = getattr(prior, "metadata", None)
    if meta is None:
        return "held-out"
    structures = set(meta.get("structures", ()))
    structure = case.info.get("structure")
    if structures and structure and structure not in structures:
        return None
    if case.name in meta.get("train_cases", ()):
        return "train"
    if case.name in meta.get("val_cases", ()):
        return "validation"
    return "held-out"


def evaluate_case(case: Case, backend, config: EvalConfig, severity: str, progress=None,
                  second=None) -> tuple[list[dict], dict]:
    """Rows of results.csv for one case and severity, plus the artefacts the report draws.
    ``second``: the already loaded second prior (loaded here when not given)."""
    volume = read_volume(case.image, case.name)
    label_value = case.info.get("label_value", config.label_value)
    label = read_label(case.label, volume, label_value=label_value)
    preset = case.info.get("preset", config.preset)
    if case.centerline is not None:
        centerline, noise = read_markups(case.centerline), {"source": "given centerline.mrk.json"}
    else:
        noisy = simulate(centerline_from_label(volume, label), volume, label, severity, seed=config.seed)
        centerline, noise = noisy.centerline, noisy.model.as_dict()
    ref = volume.with_array(label).slices()
    spacing = (volume.slice_spacing, *volume.in_plane_spacing)
    base = {"tau": config.tau, "context": config.context, "thick_context": config.thick_context,
            "intensity_preset": preset}
    priors: dict[str, object] = {}
    if second is None and "spd-prior2" in config.methods:
        second = load_prior(config.second_prior or "intensity", backend)
    role = prior_role(second, case) if config.second_prior and "spd-prior2" in config.methods else None
    second_name = f"spd-{'trained' if config.second_prior else 'intensity'}"
    rows, masks, results, boxes = [], {}, {}, {}
    shared: dict[str, dict] = {}  # _maps_key -> the maps on the full prompt set, shared by the methods using them
    window_preset = volume_window(volume, preset).preset  # an MRI window samples the volume: once per case
    # spd first: it computes the maps it shares, so its time column is a whole run
    order = sorted(dict.fromkeys(config.methods), key=lambda m: (PROMPT_METHODS.get(m, PromptMethod("")).random_half,
                                                                   m not in PROMPT_METHODS, m != "spd"))
    if config.second_prior and "spd-prior2" in order and role is None:
        order.remove("spd-prior2")  # the trained prior is for another structure
    for i, method in enumerate(order):
        if progress:
            progress(case.name, severity, method, i, len(order))
        start = time.perf_counter()
        name = second_name if method == "spd-prior2" else method
        if method in PROMPT_METHODS:
            spec = PROMPT_METHODS[method]
            prior_spec = spec.prior or config.prior
            if prior_spec not in priors:
                priors[prior_spec] = load_method_prior(prior_spec, backend)
            params = SegmentParams(method=spec.cpd, consistency=spec.consistency, propagate=spec.propagate,
                                   **({} if spec.leak_limit else {"leak_limit": None}), **base)
            prompts = _random_half(centerline, config.seed) if spec.random_half else centerline
            key = _maps_key(prior_spec, priors[prior_spec], window_preset)
            results[name] = _run(volume, prompts, backend, priors[prior_spec], params, shared.get(key))
            if not spec.random_half:  # the maps of the full prompt set are the ones to share
                shared.setdefault(key, results[name].saliency_maps)
        elif method == "oracle-prior":
            oracle = {t: (ref[t] > 0).astype(np.float32) for t in range(len(ref))}
            prior = priors.get(config.prior) or load_prior(config.prior, backend)
            results[name] = _run(volume, centerline, backend, prior, SegmentParams(method="spd", **base), oracle)
        elif method == "spd-prior2":
            results[name] = _run(volume, centerline, backend, second, SegmentParams(method="spd", **base), None)
        elif method == "box":
            boxes[name] = raw_point_boxes(volume, slice_prompts(centerline, volume))
        elif method == "label-box":
            boxes[name] = _label_boxes(volume, ref)
        else:
            raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
        mask = results[name].mask if name in results else box_prompts_masks(volume, backend, preset, boxes[name])
        seconds = time.perf_counter() - start
        scores = evaluate(volume.with_array(mask).slices(), ref, spacing)
        quality = {"prior_dice": float("nan"), "prior_auc": float("nan")}
        if name in results and method not in ("raw", "random", "oracle-prior"):
            quality = prior_quality(results[name].saliency_maps, ref, results[name].tau)
        rows.append({"case": case.name, "method": name, "severity": severity, **scores, "seconds": seconds, **quality})
        masks[name] = mask
    rank = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: rank.get(r["method"], rank["spd-prior2"]))  # spd ran first; report in METHODS order
    masks = {r["method"]: masks[r["method"]] for r in rows}
    return rows, {"volume": volume, "label": label, "results": results, "masks": masks, "noise": noise,
                  "preset": preset, "boxes": boxes, "prior_role": role}


def _maps_key(spec: str, prior, window_preset: str) -> str:
    """One key for the prior specs that give the same maps on a volume shown with ``window_preset``
    (the resolved window, never ``auto``): the default ``sam-track`` gates MRI only, so on CT its
    maps are ``sam-track-ungated``'s (the ``spd-extent`` ablation row then reuses ``spd``'s maps
    instead of tracking the volume again)."""
    if isinstance(prior, TrackPrior) and not prior.gates(window_preset):
        return repr(("sam-track, no gate", prior.params))
    return spec


def _run(volume, centerline, backend, prior, params, saliency):
    """One pipeline run; a run whose prior found nothing counts as its empty result."""
    try:
        return segment(volume, centerline, backend, prior, params, saliency=saliency)
    except NothingToSegment as exc:
        return exc.result


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in COLUMNS})


def run_evaluation(cases_dir: str | Path, out_dir: str | Path, backend, config: EvalConfig, log=print,
                   failures: list[dict] | None = None) -> list[dict]:
    """Evaluate every case at every severity; returns the rows of results.csv.

    A case that raises (a damaged file, a curve outside the image, a bug) is reported and left out,
    whole, and the other cases go on, as in ``segment-batch``: one bad study must not cost the hours
    of a cohort's run. Each failure is logged, listed in the report and in ``failures.json`` (written
    as it happens), and appended to ``failures`` when the caller passes a list. If every case fails,
    it raises ValueError. A previous run's results, report and failures in ``out_dir`` are cleared
    first, so what the folder holds is always this run's."""
    from .report import write_report

    failures = failures if failures is not None else []

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for severity in config.severities:
        if severity not in SEVERITIES:
            raise ValueError(f"unknown severity {severity!r}; choose from {', '.join(SEVERITIES)}")
    unknown = set(config.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    cases = find_cases(cases_dir)
    runs = len(cases) * len(dict.fromkeys(config.methods))
    second = None  # loaded once for every case (a LoRA prior copies the encoder); a bad file fails now
    if config.second_prior or "spd-prior2" in config.methods:
        second = load_prior(config.second_prior or "intensity", backend)
        if config.second_prior and "spd-prior2" in config.methods:
            runs -= sum(prior_role(second, c) is None for c in cases)
    rows, artefacts = [], {}
    for stale in ("failures.json", "report.md"):
        (out / stale).unlink(missing_ok=True)
    for stale_panel in (out / "panels").glob("panel_*.png"):  # a previous run's panels (other cases, severities)
        stale_panel.unlink()
    write_csv(rows, out / "results.csv")
    from tqdm import tqdm

    with tqdm(total=runs * len(config.severities), desc="evaluate", unit="run") as bar:
        def progress(case, severity, method, i, n):
            bar.set_postfix_str(f"{case} {severity} {method}")
            if i:
                bar.update(1)

        done = []
        for case in cases:
            case_rows, case_art = [], {}
            for severity in config.severities:
                try:
                    found, art = evaluate_case(case, backend, config, severity, progress, second)
                except Exception as exc:  # noqa: BLE001 -- any failure of one case; Ctrl-C still stops the run
                    first = str(exc).splitlines()[0][:300] if str(exc) else ""
                    failures.append({"case": case.name, "severity": severity, "error": f"{type(exc).__name__}: {first}",
                                     "traceback": traceback.format_exc()})
                    (out / "failures.json").write_text(json.dumps(failures, indent=2))
                    log(f"case {case.name} ({severity}) failed: {type(exc).__name__}: {first}; it is left out "
                        "of the results and the other cases go on")
                    break
                bar.update(1)
                case_rows += found
                case_art[(case.name, severity)] = art
            else:  # every severity ran: the case counts
                rows += case_rows
                artefacts.update(case_art)
                done.append(case)
                write_csv(rows, out / "results.csv")  # keep partial results if interrupted
            backend.cache.clear(disk=False)  # embeddings of finished cases are not needed again
    if not done:
        raise ValueError(f"every case failed (see {out / 'failures.json'}); the first: "
                         f"{failures[0]['case']}: {failures[0]['error']}")
    write_report(rows, artefacts, done, config, out, failures)
    meta = {**config.__dict__, "backend": backend.identity, "device": backend.device, "runtime": backend.runtime}
    (out / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    log(f"results: {out / 'results.csv'}; report: {out / 'report.md'}")
    return rows
