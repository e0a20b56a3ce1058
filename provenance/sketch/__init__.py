"""Approximate post-hoc queries from projected-gradient sketches stored during training (docs/posthoc.md).

Training (config.SketchConfig(enabled=True)): an engine observer sketches every row's gradient with fixed
Kronecker-factored projections; the store keeps per-(segment, chunk) sketches scaled by each step's AdamW
coefficient, plus each segment's anchor (weights + Adam second moment). A query takes a new output's
preconditioned gradient at every anchor, projects it, and dots it with the stored rows. Values are
approximate and labelled so; exact values come from replay (provenance.train.attribute).
Projection "pca" (settings) calibrates data-dependent projections on the first steps (CovarianceSketch);
training.sketch_by_replay writes a store for a recorded run by replaying it.
"""

from provenance.sketch.observer import CovarianceSketch, RowSketcher, adam_scales
from provenance.sketch.projection import ParamSlot, Projections, model_fingerprint
from provenance.sketch.query import APPROXIMATE_LABEL, ApproximateQuery, approximate_values, sketch_settings
from provenance.sketch.store import SketchStore, SketchWriter

__all__ = [
    "APPROXIMATE_LABEL", "ApproximateQuery", "CovarianceSketch", "ParamSlot", "Projections", "RowSketcher", "SketchStore",
    "SketchWriter", "adam_scales", "approximate_values", "model_fingerprint", "sketch_settings",
]
