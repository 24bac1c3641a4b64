"""Stage 5, evaluate: WER of a model on the test sets (``stage``), and paired comparison of
two evaluated runs (``compare``, the ``rsft compare`` command)."""

from pipeline.evaluate.compare import changes, compare
from pipeline.evaluate.stage import run

__all__ = ["changes", "compare", "run"]
