"""Stage 4, finetune: the stage (``stage``), batches and packing (``batches``), forgetting
controls (``forgetting``), checkpoints and saved models (``checkpoints``), dev validation."""

from pipeline.finetune.stage import run

__all__ = ["run"]
