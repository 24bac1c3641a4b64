"""Stage 1, prepare: corpus sources (``corpora/``) into manifests and audio under the data root."""

from pipeline.prepare.stage import run

__all__ = ["run"]
