"""In-Run Data Shapley engine: per-step values of every training row for every target, exactly."""

from .config import EngineConfig
from .engine import AttributionEngine, StepResult
from .registry import LayerRule, register, registered_types
from .task import CausalLMTask, ClassificationTask, LMBatch, Task

__all__ = [
    "AttributionEngine",
    "CausalLMTask",
    "ClassificationTask",
    "EngineConfig",
    "LMBatch",
    "LayerRule",
    "StepResult",
    "Task",
    "register",
    "registered_types",
]
