"""Batch use of the SPDSegment Logic in plain Python with the slicer-core wheel (no Slicer GUI).

    .venv/bin/python examples/batch_slicer_core.py [--out aorta.seg.nrrd]

The lines after "Same code as in Slicer's Python console" are what a user types in Slicer.
Loads the CTA sample (after `python -m SPDSegmentLib fetch-data`) as MRML nodes, makes a markups
curve from the aorta label's skeleton (a stand-in for a radiologist's clicks), runs the Logic and
saves the segmentation through a storage node.
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "SPDSegment" / "Testing" / "Python"), str(REPO / "SPDSegment"), str(REPO)]

import slicer_headless  # noqa: E402  (boots slicer-core: real MRML and module logics)

slicer_headless.boot()
import slicer  # noqa: E402

from SPDSegmentLib.evaluation import sample_data  # noqa: E402
from SPDSegmentLib.io import read_label  # noqa: E402
from SPDSegmentLib.evaluation.skeleton import centerline_from_label  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("output/batch/aorta.seg.nrrd"))
    args = ap.parse_args()
    volume_id = slicer.modules.volumes.logic().AddArchetypeVolume(str(sample_data.path("cta/image.nii.gz")), "CTA")
    volumeNode = volume_id if not isinstance(volume_id, str) else slicer.mrmlScene.GetNodeByID(volume_id)
    # a curve along the aorta from 30 to 60 mm above the lowest slice
    engine_volume = __import__("SPDSegmentLib.frontends.mrml_logic", fromlist=["x"]).SPDSegmentLogic.volumeFromNode(volumeNode)
    label = read_label(sample_data.path("cta/aorta.nii.gz"), engine_volume)
    points = centerline_from_label(engine_volume, label).points_ras
    src = engine_volume.ras_to_src(points)
    curve = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "AortaCurve")
    slicer.util.updateMarkupsControlPointsFromArray(curve, points[(src[:, 0] > 20) & (src[:, 0] < 40)][::4])

    # Same code as in Slicer's Python console:
    import SPDSegment
    logic = SPDSegment.SPDSegmentLogic()
    out = logic.process(slicer.util.getNode("CTA"), slicer.util.getNode("AortaCurve"), None, "aorta",
                        intensityPreset="ct-angio", progress=lambda f, m: print(f"{100 * f:5.1f}% {m}", end="\r"))
    print("\n", out.summary["counts"])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    storage = out.segmentationNode.CreateDefaultStorageNode()
    slicer.mrmlScene.AddNode(storage)
    out.segmentationNode.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(args.out))
    if not storage.WriteData(out.segmentationNode):
        raise SystemExit(f"could not write {args.out}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
