"""Training: recipes, the checkpoint manager, the optimizer and its schedules, the trainer loop."""

from .checkpoint import CheckpointManager, list_checkpoints
from .recipe import DataConfig, ModelSection, OptimConfig, Recipe, TrainConfig, apply_overrides, load_recipe, save_recipe
from .trainer import CollapseError, NonFiniteError, Trainer, TrainingInterrupted, TrainResult, train

__all__ = ["CheckpointManager", "list_checkpoints", "DataConfig", "ModelSection", "OptimConfig", "Recipe",
           "TrainConfig", "apply_overrides", "load_recipe", "save_recipe", "CollapseError", "NonFiniteError", "Trainer", "TrainingInterrupted",
           "TrainResult", "train"]
