"""Stage 3, select: density ratios (``ratios``), samplers (``sampling``, ``fixed_budget``),
the baselines at the same budget, and their plots."""

from pipeline.select.stage import GENERATED, run

__all__ = ["GENERATED", "run"]
