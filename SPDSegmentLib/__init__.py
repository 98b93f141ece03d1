"""SPDSegmentLib: Saliency-guided Prompt Distillation for SAM, from a noisy centerline to a 3D mask.

Pure Python (numpy, torch, segment-anything, SimpleITK, scikit-image); no Slicer import anywhere,
so the same engine serves the command line, plain Python and the 3D Slicer module.
"""
__version__ = "0.1.0"
