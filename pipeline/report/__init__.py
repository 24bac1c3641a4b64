"""Stage 6, report: the comparison's tables (``stats``, ``compare``), figures (``plots``) and
the Markdown/HTML document (``doc``)."""

from pipeline.report.stage import run

__all__ = ["run"]
