"""Stage 2, score: every pool and target utterance's embeddings, losses and hypotheses."""

from pipeline.score.stage import run

__all__ = ["run"]
