"""What the command-line commands share: the progress bar and building the engine from options."""
from __future__ import annotations

import sys


class TqdmProgress:
    """Terminal progress bar fed by the pipeline's ``progress(fraction, message)`` callback."""

    def __init__(self, desc: str, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, desc=desc, disable=not enabled, file=sys.stderr,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        self.bar.n = int(1000 * fraction)
        self.bar.set_postfix_str(message, refresh=True)

    def close(self) -> None:
        self.bar.close()


def backend_and_prior(args):
    """The SAM backend (with an optional fine-tuned decoder) and the prior named by the engine options."""
    from ..method.saliency import load_prior
    from ..sam.backend import load_backend
    from ..sam.embedding_cache import EmbeddingCache

    cache = EmbeddingCache(folder=args.cache_dir) if args.cache_dir else None
    backend = load_backend(args.backend, args.checkpoint, args.device, cache, runtime=getattr(args, "runtime", "auto"))
    if getattr(args, "decoder", None):
        from ..training.decoder import load_decoder

        load_decoder(backend, args.decoder)
    return backend, load_prior(args.prior, backend)


def segment_params(args):
    """SegmentParams from the engine options."""
    from ..method.pipeline import SegmentParams

    return SegmentParams(method=args.method, tau=args.tau, context=args.context, thick_context=args.thick_context,
                         consistency=args.consistency,
                         fallback=args.fallback, propagate=args.propagate, intensity_preset=args.preset,
                         leak_limit=args.leak_limit)
