"""Stage 3, select: density ratios (``ratios``), samplers (``sampling``, ``fixed_budget``),
the baselines at the same budget, and their plots."""

from pipeline.select.generated import GENERATED
from pipeline.select.stage import active_selectors, run

__all__ = ["GENERATED", "active_selectors", "run"]
