"""Classic augmentation: one registry of operations (:mod:`core.augment.ops`), pipelines of
them (:mod:`core.augment.pipeline`), batches on the CPU or a GPU, and augmented dataset folders
(:mod:`core.augment.apply`). Importing this package loads neither torch nor mlflow."""
from core.augment.ops import OPS, STUDY_OPERATIONS, Geometry, Op, Param, get_op, transform_boxes, value_max
from core.augment.pipeline import PRESETS, Augmented, Pipeline, Step, load_pipeline, spine_safe_pipeline, study_pipeline

__all__ = ["OPS", "PRESETS", "STUDY_OPERATIONS", "Augmented", "Geometry", "Op", "Param", "Pipeline", "Step",
           "get_op", "load_pipeline", "spine_safe_pipeline", "study_pipeline", "transform_boxes", "value_max"]
