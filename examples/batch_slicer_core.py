"""Batch use of SPDSegment's MRML logic in plain Python, on the slicer-core wheel (no Slicer application).

    .venv/bin/python examples/batch_slicer_core.py [--out output/batch/aorta.seg.nrrd]

The lines after "Same code as in Slicer's Python console" are what a user types in Slicer (there,
``import SPDSegment; logic = SPDSegment.SPDSegmentLogic()`` gives the same logic). Loads the CTA sample
(after ``spdsegment fetch-data``) as MRML nodes, makes a markups curve from the aorta label's skeleton
(a stand-in for a radiologist's clicks), runs the logic and saves the segmentation through a storage node.
"""
import argparse
from pathlib import Path

from SPDSegmentLib.frontends.mrml_headless import boot_headless_slicer

boot_headless_slicer()  # in Slicer the application has done this
import slicer

from SPDSegmentLib.evaluation import sample_data
from SPDSegmentLib.evaluation.skeleton import centerline_from_label
from SPDSegmentLib.frontends.mrml_logic import SPDSegmentMRMLLogic
from SPDSegmentLib.io import read_label


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("output/batch/aorta.seg.nrrd"))
    args = ap.parse_args()
    loaded = slicer.modules.volumes.logic().AddArchetypeVolume(str(sample_data.path("cta/image.nii.gz")), "CTA")
    volume_node = slicer.mrmlScene.GetNodeByID(loaded) if isinstance(loaded, str) else loaded
    # a curve along the aorta from 30 to 60 mm above the lowest slice
    engine_volume = SPDSegmentMRMLLogic.volumeFromNode(volume_node)
    label = read_label(sample_data.path("cta/aorta.nii.gz"), engine_volume)
    points = centerline_from_label(engine_volume, label).points_ras
    src = engine_volume.ras_to_src(points)
    curve = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "AortaCurve")
    slicer.util.updateMarkupsControlPointsFromArray(curve, points[(src[:, 0] > 20) & (src[:, 0] < 40)][::4])

    # Same code as in Slicer's Python console:
    logic = SPDSegmentMRMLLogic()
    out = logic.process(slicer.util.getNode("CTA"), slicer.util.getNode("AortaCurve"), None, "aorta",
                        intensityPreset="ct-angio", progress=lambda f, m: print(f"{100 * f:5.1f}% {m}", end="\r"))
    print("\n", out.summary["counts"], out.warnings)

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
