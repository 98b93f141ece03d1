"""SAM on ONNX Runtime: the fast path on CPUs, for the image encoder and the box-prompted decoder.

On a 2-core CPU, LiteMedSAM's TinyViT encoder takes about 0.9-1.4 s per slice in torch eager and
about 0.4-0.5 s in ONNX Runtime, with the same embedding (max |difference| ~1e-6). Its mask decoder,
called a few times per slice by the prior and the final pass, takes about 42 ms per box in torch
and about 16-20 ms in ONNX Runtime (mask logits within ~3e-5), cut in a per-slice and a per-box
part (:func:`_split_box_decoder_modules`). Each model is exported once per checkpoint
(``torch.onnx.export``, opset 17) into a cache folder, keyed by the checkpoint's sha256, and checked
against torch before first use; an unreadable or foreign cached file is detected, re-exported and
logged. torch stays the runtime on CUDA, for point prompts and for a fine-tuned decoder.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
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
    disabled_optimizers: tuple[str, ...] = ()  # ONNX Runtime graph rewrites that measured slower here

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
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(self.disabled_optimizers) or None)

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
            except Exception as exc:  # noqa: BLE001  a truncated or foreign file fails to load or to run
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
    ``SamPredictor.predict(box=..., multimask_output=False)`` computes before upsampling. The
    reference the exported decoder is checked against."""
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


def _attend(attention, q, k, v, projected: tuple[bool, bool, bool] = (False, False, False)):
    """SAM's ``Attention.forward`` where any of q, k, v may already be projected."""
    q = q if projected[0] else attention.q_proj(q)
    k = k if projected[1] else attention.k_proj(k)
    v = v if projected[2] else attention.v_proj(v)
    heads = attention.num_heads
    q, k, v = (attention._separate_heads(x, heads) for x in (q, k, v))
    weights = (q @ k.permute(0, 1, 3, 2)) / float(q.shape[-1]) ** 0.5
    return attention.out_proj(attention._recombine_heads(weights.softmax(dim=-1) @ v))


def _split_box_decoder_modules(sam):
    """The box decoder cut in two, for several boxes on one slice. The first transformer block
    projects the image tokens three times before any prompt reaches them (keys and values for the
    tokens' attention to the image, queries for the image's attention to the tokens): the *slice*
    module does that once per slice, the *box* module the rest once per box. Also, only the single
    mask SAM returns is computed (not all four mask tokens), and the channel LayerNorm of the
    upscaling is written as a plain LayerNorm, which ONNX Runtime runs as one fused kernel. The
    same arithmetic as SAM's decoder, in another order (logits within ~1e-5); 25-30 % faster per
    box on a 2-core CPU."""
    import torch
    import torch.nn.functional as F

    prompt_encoder, decoder = sam.prompt_encoder, sam.mask_decoder
    transformer = decoder.transformer
    first = transformer.layers[0]
    if not first.skip_first_layer_pe:
        raise OnnxUnavailable("this SAM decoder's layout is not the one the split decoder reproduces")

    def image_tokens(embedding):
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        keys = (embedding + dense).flatten(2).permute(0, 2, 1)  # (1, HW, C)
        key_pe = prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
        return keys, key_pe

    class Part(torch.nn.Module):  # holds SAM's modules, so the exporter sees their weights
        def __init__(self) -> None:
            super().__init__()
            self.prompt_encoder, self.mask_decoder = prompt_encoder, decoder

    class SlicePart(Part):
        def forward(self, embedding):
            keys, key_pe = image_tokens(embedding)
            k = keys + key_pe
            return (first.cross_attn_token_to_image.k_proj(k), first.cross_attn_token_to_image.v_proj(keys),
                    first.cross_attn_image_to_token.q_proj(k))

    class BoxPart(Part):
        def forward(self, embedding, box, k0, v0, q0):
            sparse, _ = prompt_encoder(points=None, boxes=box, masks=None)
            tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)[None]
            tokens = torch.cat((tokens, sparse), dim=1)
            keys, key_pe = image_tokens(embedding)
            queries, query_pe = tokens, tokens
            for i, layer in enumerate(transformer.layers):
                if layer.skip_first_layer_pe:
                    queries = layer.self_attn(q=queries, k=queries, v=queries)
                else:
                    q = queries + query_pe
                    queries = queries + layer.self_attn(q=q, k=q, v=queries)
                queries = layer.norm1(queries)
                q = queries + query_pe
                if i == 0:
                    out = _attend(layer.cross_attn_token_to_image, q, k0, v0, (False, True, True))
                else:
                    out = layer.cross_attn_token_to_image(q=q, k=keys + key_pe, v=keys)
                queries = layer.norm2(queries + out)
                queries = layer.norm3(queries + layer.mlp(queries))
                q = queries + query_pe
                if i == 0:
                    out = _attend(layer.cross_attn_image_to_token, q0, q, queries, (True, False, False))
                else:
                    out = layer.cross_attn_image_to_token(q=keys + key_pe, k=q, v=queries)
                keys = layer.norm4(keys + out)
            out = transformer.final_attn_token_to_image(q=queries + query_pe, k=keys + key_pe, v=keys)
            queries = transformer.norm_final_attn(queries + out)

            side = embedding.shape[-1]
            src = keys.transpose(1, 2).reshape(1, -1, embedding.shape[-2], side)
            up1, norm, act1, up2, act2 = decoder.output_upscaling
            x = up1(src)
            x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)
            x = act2(up2(act1(x)))
            hyper = decoder.output_hypernetworks_mlps[0](queries[:, 1, :])  # mask token 0: the single mask
            b, c, h, w = x.shape
            logits = (hyper[:, None, :] @ x.reshape(b, c, h * w)).reshape(b, 1, h, w)
            iou = decoder.iou_prediction_head(queries[:, 0, :])[:, 0:1]
            return logits, iou

    return SlicePart().eval(), BoxPart().eval()


class _OnnxSlicePart(_VerifiedOnnxModel):
    input_names, output_names = ("embedding",), ("k0", "v0", "q0")
    spin = False

    def __init__(self, module, file_name: str, embedding_shape, folder, threads) -> None:
        self.embedding_shape = embedding_shape
        super().__init__(module, file_name, folder, threads)

    def check_inputs(self) -> tuple:
        import torch

        return (torch.randn(*self.embedding_shape, generator=torch.Generator().manual_seed(0)),)


class _OnnxBoxPart(_VerifiedOnnxModel):
    input_names, output_names = ("embedding", "box", "k0", "v0", "q0"), ("low_res_logits", "iou")
    tolerance = 1e-3  # mask logits are O(10); masks are thresholded at 0
    spin = False  # decodes alternate with the tracker's numpy work: spinning threads took its cores (~10 %)
    # the fused add + LayerNorm kernel took 2.5 ms on each 4096 x 256 image-token norm, the plain
    # LayerNorm kernel after an add well under half that: 20 -> 16.5 ms per box on 2 cores
    disabled_optimizers = ("SkipLayerNormFusion",)

    def __init__(self, module, slice_module, file_name: str, embedding_shape, img_size: int, folder,
                 threads) -> None:
        self.embedding_shape, self.img_size, self.slice_module = embedding_shape, img_size, slice_module
        super().__init__(module, file_name, folder, threads)

    def check_inputs(self) -> tuple:
        import torch

        embedding = torch.randn(*self.embedding_shape, generator=torch.Generator().manual_seed(0))
        s = float(self.img_size)
        with torch.no_grad():
            prefix = self.slice_module(embedding)
        return (embedding, torch.tensor([[0.25 * s, 0.3 * s, 0.55 * s, 0.6 * s]]), *prefix)


class OnnxBoxDecoder:
    """(1, C, h, w) embedding + one box in the encoder's input frame -> low-resolution mask logits
    (1, 1, 4h, 4w) and SAM's predicted IoU (1, 1), as numpy arrays. Two exported models (see
    :func:`_split_box_decoder_modules`): the slice part runs once per embedding (the last few are
    kept, keyed by the caller's ``key``), the box part once per box. On load, the two together are
    checked against SAM's own decoder in torch."""

    VERSION = 2  # 1: one model per box (before the split)
    KEPT_SLICES = 4

    def __init__(self, sam, identity: str, folder: str | Path | None = None, threads: int | None = None) -> None:
        embedding_shape = (1, int(sam.prompt_encoder.embed_dim), *sam.prompt_encoder.image_embedding_size)
        img_size = int(sam.image_encoder.img_size)
        stem = f"{identity.replace(':', '-')}-box-decoder-v{self.VERSION}-{img_size}-opset{OPSET}"
        slice_module, box_module = _split_box_decoder_modules(sam)
        self.slice_part = _OnnxSlicePart(slice_module, f"{stem}-slice.onnx", embedding_shape, folder, threads)
        self.box_part = _OnnxBoxPart(box_module, slice_module, f"{stem}-box.onnx", embedding_shape, img_size,
                                     folder, threads)
        self.path = self.box_part.path
        self.calls = 0
        self._prefixes: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # the web app may decode from more than one thread
        self._check_against(_box_decoder_module(sam), self.box_part.check_inputs()[:2])

    def _check_against(self, reference, inputs) -> None:
        import torch

        with torch.no_grad():
            logits, iou = reference(*inputs)
        out_logits, out_iou = self(inputs[0].numpy(), inputs[1].numpy())
        error = max(float(np.max(np.abs(out_logits - logits.numpy()))), float(np.max(np.abs(out_iou - iou.numpy()))))
        if error > _OnnxBoxPart.tolerance:
            raise OnnxUnavailable(f"the split ONNX box decoder differs from SAM's decoder by {error:.2g}; use "
                                  "--runtime torch")
        self.calls = 0

    def _prefix(self, embedding: np.ndarray, key) -> list[np.ndarray]:
        """The slice part of ``embedding``, computed once per key; the least recently used is dropped."""
        with self._lock:
            prefix = self._prefixes.get(key) if key is not None else None
            if prefix is not None:
                self._prefixes.move_to_end(key)
                return prefix
        prefix = self.slice_part.run(embedding)
        if key is not None:
            with self._lock:
                self._prefixes[key] = prefix
                while len(self._prefixes) > self.KEPT_SLICES:
                    self._prefixes.popitem(last=False)
        return prefix

    def clear(self) -> None:
        """Forget the kept slice parts (a benchmark's cold start)."""
        with self._lock:
            self._prefixes.clear()

    def __call__(self, embedding: np.ndarray, box_xyxy: np.ndarray, key=None) -> tuple[np.ndarray, np.ndarray]:
        """``key`` names the embedding (its cache key): a slice's boxes then share its slice part."""
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        prefix = self._prefix(embedding, key)
        self.calls += 1
        logits, iou = self.box_part.run(embedding, np.asarray(box_xyxy).reshape(1, 4), *prefix)
        return logits, iou  # (1, 1, 4h, 4w) logits, (1, 1) IoU
