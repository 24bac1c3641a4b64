"""The package's shape: stage packages are peers that never import each other; one module owns
the data tree, and only the models know which model family they are."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"
STAGES = ("prepare", "score", "select", "finetune", "evaluate", "report")
# the only modules that see every stage
ORCHESTRATION = ("cli.py", "experiment.py", "personal.py")


def imported_modules(path: Path) -> set[str]:
    """Every ``pipeline...`` module a file imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline")}
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline")
        ):
            # `from pipeline import select` imports the package pipeline.select
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_every_stage_is_a_package():
    for stage in STAGES:
        assert (PIPELINE / stage / "__init__.py").is_file(), stage
        assert not (PIPELINE / f"{stage}.py").exists(), stage


def test_no_stage_imports_another_stage():
    crossings = []
    for stage in STAGES:
        for path in (PIPELINE / stage).rglob("*.py"):
            for module in imported_modules(path):
                other = stage_of(module)
                if other is not None and other != stage:
                    crossings.append(f"{path.relative_to(PIPELINE)} imports {module}")
    assert crossings == []


def test_shared_modules_import_no_stage():
    shared = [
        p for p in PIPELINE.glob("*.py") if p.name not in ORCHESTRATION and p.name != "__main__.py"
    ]
    shared += list((PIPELINE / "models").rglob("*.py"))
    shared += list((PIPELINE / "generate").rglob("*.py"))  # generators the stages share
    assert len(shared) > 10
    for path in shared:
        stages = {stage_of(m) for m in imported_modules(path)} - {None}
        assert not stages, f"{path.relative_to(PIPELINE)} imports {stages}"


def test_the_walk_sees_a_crossing(tmp_path):
    # the walk itself must catch the forms an import takes
    source = "from pipeline import select\nimport pipeline.score.stage\n"
    source += "def f():\n    from pipeline.evaluate.stage import run\n"
    path = tmp_path / "m.py"
    path.write_text(source)
    assert {stage_of(m) for m in imported_modules(path)} >= {"select", "score", "evaluate"}


def test_paths_and_model_kinds_have_one_owner():
    pattern = re.compile(r'"prepare" / "manifests"|MODELS_DIR|isinstance\(.*(Whisper|CTC)')
    hits = []
    for path in PIPELINE.rglob("*.py"):
        rel = path.relative_to(PIPELINE)
        if rel.parts[0] == "models" or rel.name == "layout.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{rel}:{number}: {line.strip()}")
    assert hits == []
