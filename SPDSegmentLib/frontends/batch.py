"""``segment-batch``: segment a folder of studies on Dask distributed.

Each study is a folder in the evaluation's layout with a centerline: ``image.*`` (or ``image/`` for
DICOM) and ``centerline.mrk.json``, optionally ``case.json`` (``preset``). Studies run as Dask tasks,
on an in-process ``LocalCluster`` (``workers`` processes, one thread each) or on an existing cluster
(``scheduler`` address). A worker loads the SAM model once and keeps it for every study it gets. A
study that fails is reported with its error and the others go on. Results do not depend on which
worker ran a study: the same inputs give byte-identical files to a serial run with the same threads.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..evaluation.cases import case_folders
from ..method.pipeline import SegmentParams

_WORKER_ENGINES: dict = {}  # per worker process: model options -> (backend, prior name)


@dataclass(frozen=True)
class EngineOptions:
    """Everything a worker needs to build the engine and run one study (plain data: it is pickled)."""

    backend: str = "litemedsam"
    checkpoint: str | None = None
    device: str = "cpu"
    runtime: str = "auto"
    prior: str | None = None
    params: SegmentParams = field(default_factory=SegmentParams)  # its window yields to a study's case.json
    threads: int = 1  # per worker: several workers must not oversubscribe the cores
    overwrite: bool = False


@dataclass
class Study:
    name: str
    folder: Path
    image: Path
    centerline: Path
    info: dict


def find_studies(folder: str | Path) -> list[Study]:
    from ..io import InputError

    studies = []
    for sub, image in case_folders(folder, "study"):
        centerline = sub / "centerline.mrk.json"
        if image is None or not centerline.is_file():
            raise InputError(f"study {sub.name}: needs image.(nii.gz|nrrd|mha) or image/ and centerline.mrk.json "
                             f"(found {sorted(p.name for p in sub.iterdir())})")
        info = json.loads((sub / "case.json").read_text()) if (sub / "case.json").is_file() else {}
        studies.append(Study(sub.name, sub, image, centerline, info))
    if not studies:
        raise InputError(f"{folder} holds no study folders")
    return studies


def _engine(options: EngineOptions):
    """The backend and prior of this process, built once per distinct model."""
    key = (options.backend, options.checkpoint, options.device, options.runtime, options.prior, options.threads)
    if key not in _WORKER_ENGINES:
        import torch

        from ..method.saliency import load_prior
        from ..sam.backend import load_backend

        torch.set_num_threads(options.threads)
        os.environ.setdefault("SPDSEGMENT_THREADS", str(options.threads))
        backend = load_backend(options.backend, options.checkpoint, options.device, runtime=options.runtime)
        _WORKER_ENGINES.clear()  # one model per worker at a time: memory
        _WORKER_ENGINES[key] = (backend, load_prior(options.prior, backend))
    return _WORKER_ENGINES[key]


def segment_study(folder: str, out_dir: str, options: EngineOptions) -> dict:
    """Segment one study; never raises: a failure is a result with its error."""
    start = time.perf_counter()
    folder, out_dir = Path(folder), Path(out_dir)
    record = {"study": folder.name, "status": "failed", "output": None, "error": None, "worker_pid": os.getpid()}
    try:
        from ..io import guard_output, read_markups, read_volume, write_segmentation
        from ..method.checks import preflight
        from ..method.pipeline import segment

        study = next(s for s in find_studies(folder.parent) if s.name == folder.name)
        out = out_dir / study.name / "segmentation.seg.nrrd"
        guard_output(out, options.overwrite, create_parent=False)
        volume = read_volume(study.image, study.name)
        centerline = read_markups(study.centerline)
        params = replace(options.params, intensity_preset=study.info.get("preset", options.params.intensity_preset))
        checked = preflight(volume, centerline, params)
        backend, prior = _engine(options)
        result = segment(checked.volume, centerline, backend, prior, params, checked=checked)
        write_segmentation(checked.volume, {centerline.name: result.mask}, out, overwrite=options.overwrite)
        summary = result.summary()
        (out.parent / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        record.update(status="ok", output=str(out), counts=summary["counts"], warnings=summary["warnings"])
    except Exception as exc:  # noqa: BLE001  one study's failure must not stop the cohort
        record.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
    record["seconds"] = time.perf_counter() - start
    return record


def run_batch(cases_dir: str | Path, out_dir: str | Path, options: EngineOptions, workers: int = 2,
              scheduler: str | None = None, serial: bool = False, log=print) -> list[dict]:
    """All studies of ``cases_dir`` into ``out_dir/<study>/``; writes ``out_dir/batch.json``."""
    studies = find_studies(cases_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if serial:
        records = [segment_study(str(s.folder), str(out_dir), options) for s in studies]
    else:
        from dask.distributed import Client, LocalCluster, as_completed

        cluster = None
        if scheduler is None:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(scheduler or cluster)
        try:
            futures = [client.submit(segment_study, str(s.folder), str(out_dir), options, pure=False,
                                     key=f"study-{s.name}") for s in studies]
            records = []
            for future in as_completed(futures):
                record = future.result()
                records.append(record)
                log(f"{record['study']}: {record['status']} ({record['seconds']:.1f} s)"
                    + (f": {record['error']}" if record["error"] else ""))
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    records.sort(key=lambda r: r["study"])
    summary = {"studies": records, "seconds": time.perf_counter() - start, "workers": 1 if serial else workers,
               "scheduler": scheduler or ("serial" if serial else "LocalCluster"), "options": asdict(options)}
    (out_dir / "batch.json").write_text(json.dumps(summary, indent=2, default=str))
    failed = [r for r in records if r["status"] != "ok"]
    log(f"{len(records) - len(failed)} of {len(records)} studies segmented in {summary['seconds']:.1f} s"
        + (f"; failed: {', '.join(r['study'] for r in failed)}" if failed else ""))
    return records
