"""Audit outputs of a run that other tools read: the prompts as a Slicer point list."""
from __future__ import annotations

from ..io import markups_document


def audit_markups(result, name: str = "SPD prompts") -> dict:
    """All prompt points as one .mrk.json point list; each label says what CPD did with the point
    (``kept``, ``rejected``, ``borrowed<-slice``, ``fallback``) so a reviewer can filter by it."""
    rows = result.audit_rows()
    ras = [[r["r"], r["a"], r["s"]] for r in rows]
    labels = [r["status"] if r["status"] != "borrowed" else f"borrowed<-{r['source_slice']}" for r in rows]
    descriptions = [f"slice {r['slice']}, saliency {r['saliency']:.2f}" for r in rows]
    return markups_document("Fiducial", name, ras, labels, descriptions, color=(0.2, 0.8, 1.0))
