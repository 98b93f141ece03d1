"""The method, stage by stage, in the order a run goes through them.

``prompts``    centerline -> per-slice point prompts (exact plane crossings, RAS <-> IJK)
``windowing``  intensity window per volume -> 8-bit slices for SAM
``saliency``   stage 1: the anatomical prior, one [0, 1] map per slice (trained or training-free)
``cpd``        stage 2: contextual prompt distillation (local + dual validation -> consensus)
``rendering``  how a consensus set is shown to a given SAM (boxes for LiteMedSAM, points for SAM)
``pipeline``   the whole run: prompts -> prior -> CPD -> SAM -> 3D mask, with progress and cancel
"""
