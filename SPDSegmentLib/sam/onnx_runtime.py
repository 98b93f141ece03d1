"""SAM on ONNX Runtime: the fast path on CPUs, for the image encoder and the box-prompted decoder.

On a 2-core CPU, LiteMedSAM's TinyViT encoder takes about 0.9-1.4 s per slice in torch eager and
about 0.4-0.5 s in ONNX Runtime, with the same embedding (max |difference| ~1e-6). Its mask decoder,
called a few times per slice by the prior and the final pass, takes about 45 ms per box in torch
and about 22 ms in ONNX Runtime (mask logits within ~3e-5). Each model is exported once per checkpoint
(``torch.onnx.export``, opset 17) into a cache folder, keyed by the checkpoint's sha256, and checked
against torch before first use; an unreadable or foreign cached file is detected, re-exported and
logged. torch stays the runtime on CUDA, for point prompts and for a fine-tuned decoder.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4  # max |onnx - torch| on the check input, in embedding units
RUNTIMES = ("auto", "torch", "onnx")


class OnnxUnavailable(RuntimeError):
    """ONNX Runtime is not installed or cannot run this encoder; the message says what to do."""


def onnx_cache_dir() -> Path:
    base = os.environ.get("SPDSEGMENT_CACHE", str(Path.home() / ".cache" / "spdsegment"))
    return Path(base) / "onnx"


def onnxruntime_available() -> bool:
    """ONNX Runtime to run the encoder, and the onnx package that torch's exporter writes with."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(runtime: str, device: str) -> str:
    """``auto``: ONNX Runtime on the CPU when installed, torch otherwise (and always on CUDA)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "onnx" if device == "cpu" and onnxruntime_available() else "torch"
    if runtime == "onnx":
        if device != "cpu":
            raise OnnxUnavailable("the onnx runtime runs the encoder on the CPU; on a GPU use --runtime torch "
                                  "(or auto)")
        if not onnxruntime_available():
            raise OnnxUnavailable("onnxruntime and onnx are not both installed: pip install 'spdsegment[onnx]', or "
                                  "use --runtime torch")
    return runtime


class _VerifiedOnnxModel:
    """A torch module exported once to ``folder/<name>.onnx`` and run in ONNX Runtime, checked against
    the torch module on fixed inputs every time it is loaded. Subclasses name the inputs and outputs."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    tolerance: float = TOLERANCE  # max |onnx - torch| over the outputs on the check inputs
    spin: bool = True  # worker threads busy-wait between runs: good for back-to-back runs only

    def __init__(self, module, file_name: str, folder: str | Path | None = None, threads: int | None = None) -> None:
        if not onnxruntime_available():
            raise OnnxUnavailable("onnxruntime is not installed: pip install 'spdsegment[onnx]'")
        self.module = module
        folder = Path(folder) if folder else onnx_cache_dir()
        self.path = folder / file_name
        self.threads = threads or int(os.environ.get("SPDSEGMENT_THREADS", "0")) or max(1, min(os.cpu_count() or 1, 8))
        self.session = self._load_or_export()
        self.calls = 0

    def check_inputs(self) -> tuple:
        raise NotImplementedError

    def _session(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _export(self) -> None:
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with torch.no_grad():
            torch.onnx.export(self.module.eval(), self.check_inputs(), str(tmp), opset_version=OPSET,
                              input_names=list(self.input_names), output_names=list(self.output_names),
                              dynamo=False)
        tmp.replace(self.path)  # atomic: another process never sees a half-written model
        log.info("exported %s to %s", type(self).__name__, self.path)

    def _verified(self, session) -> float:
        import torch

        inputs = self.check_inputs()
        with torch.no_grad():
            reference = self.module(*inputs)
        reference = reference if isinstance(reference, tuple) else (reference,)
        out = session.run(None, {n: x.numpy() for n, x in zip(self.input_names, inputs)})
        return max(float(np.max(np.abs(o - r.numpy()))) for o, r in zip(out, reference))

    def _load_or_export(self):
        for attempt in range(2):
            if not self.path.is_file():
                self._export()
            try:
                session = self._session()
                error = self._verified(session)
            except Exception as exc:  # a truncated or foreign file fails to load or to run
                log.warning("cached ONNX model %s is unusable (%s: %s); exporting it again", self.path,
                            type(exc).__name__, str(exc).splitlines()[0][:200])
                self.path.unlink(missing_ok=True)
                continue
            if error <= self.tolerance:
                self._write_note(error)
                return session
            log.warning("cached ONNX model %s differs from torch by %.2g; exporting it again", self.path, error)
            self.path.unlink(missing_ok=True)
        raise OnnxUnavailable(f"{type(self).__name__}: the model exported to ONNX does not reproduce torch "
                              "(see the log); use --runtime torch")

    def _write_note(self, error: float) -> None:
        import onnxruntime
        import torch

        note = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "opset": OPSET,
                "max_abs_difference_on_check_input": error}
        try:
            self.path.with_suffix(".json").write_text(json.dumps(note, indent=2))
        except OSError:
            pass

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        self.calls += 1
        return self.session.run(None, {n: np.ascontiguousarray(a, dtype=np.float32)
                                       for n, a in zip(self.input_names, arrays)})


class OnnxImageEncoder(_VerifiedOnnxModel):
    """Callable like the torch encoder: (1, 3, S, S) float tensor -> (1, C, h, w) float tensor."""

    input_names, output_names = ("image",), ("embedding",)

    def __init__(self, encoder, identity: str, img_size: int, folder: str | Path | None = None,
                 threads: int | None = None) -> None:
        self.img_size = img_size
        super().__init__(encoder, f"{identity.replace(':', '-')}-encoder-{img_size}-opset{OPSET}.onnx", folder,
                         threads)

    def check_inputs(self) -> tuple:
        import torch

        generator = torch.Generator().manual_seed(0)
        return (torch.rand(1, 3, self.img_size, self.img_size, generator=generator),)

    def __call__(self, x):
        import torch

        return torch.from_numpy(self.run(x.detach().cpu().numpy())[0])


def _box_decoder_module(sam):
    """SAM's prompt encoder and mask decoder for one box and no mask input, single-mask output: what
    ``SamPredictor.predict(box=..., multimask_output=False)`` computes before upsampling."""
    import torch

    class BoxDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.prompt_encoder, self.mask_decoder = sam.prompt_encoder, sam.mask_decoder

        def forward(self, embedding, box):  # (1, C, h, w); (1, 4) x0, y0, x1, y1 in the input frame
            sparse, dense = self.prompt_encoder(points=None, boxes=box, masks=None)
            return self.mask_decoder(image_embeddings=embedding, image_pe=self.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                     multimask_output=False)

    return BoxDecoder().eval()


class OnnxBoxDecoder(_VerifiedOnnxModel):
    """(1, C, h, w) embedding + one box in the encoder's input frame -> low-resolution mask logits
    (1, 1, 4h, 4w) and SAM's predicted IoU (1, 1), as numpy arrays."""

    input_names, output_names = ("embedding", "box"), ("low_res_logits", "iou")
    tolerance = 1e-3  # mask logits are O(10); masks are thresholded at 0
    spin = False  # decodes alternate with the tracker's numpy work: spinning threads took its cores (~10 %)

    def __init__(self, sam, identity: str, folder: str | Path | None = None, threads: int | None = None) -> None:
        self.embedding_shape = (1, int(sam.prompt_encoder.embed_dim), *sam.prompt_encoder.image_embedding_size)
        self.img_size = int(sam.image_encoder.img_size)
        super().__init__(_box_decoder_module(sam),
                         f"{identity.replace(':', '-')}-box-decoder-{self.img_size}-opset{OPSET}.onnx", folder, threads)

    def check_inputs(self) -> tuple:
        import torch

        generator = torch.Generator().manual_seed(0)
        s = float(self.img_size)
        return (torch.randn(*self.embedding_shape, generator=generator),
                torch.tensor([[0.25 * s, 0.3 * s, 0.55 * s, 0.6 * s]]))

    def __call__(self, embedding: np.ndarray, box_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, iou = self.run(embedding, np.asarray(box_xyxy).reshape(1, 4))
        return logits, iou  # (1, 1, 4h, 4w) logits, (1, 1) IoU
