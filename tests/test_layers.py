"""Imports point down the flow, never back: sources -> normalise -> criteria -> decide ->
listing -> engines -> outputs -> commands. Each part of the package (a subpackage or a top-level
module) may import only the parts listed before it here, at module level or inside a
function alike, so a cycle or an upward import fails this test rather than a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fhir_cohort

PACKAGE = Path(fhir_cohort.__file__).parent

# Bottom to top. A part may import only the parts before it (and itself).
LAYERS = [
    "__init__",  # the version
    "errors",
    "text",
    "quality",
    "private_files",
    "reviews",
    "transport",  # HTTP, and secrets redacted from text: below the sources that use it
    "sources",
    "normalise",
    "store",
    "criteria",
    "decide",  # the one per-patient function
    "snapshots",  # what the history keeps of a candidate
    "listing",  # the ranked candidates, kept on disk
    "pipeline",
    "engines",
    "changes",
    "state",
    "outputs",
    "web",
    "commands",
    "cli",
]
# Entry points that run the command line from below it: spark-submit's script.
ENTRY_POINTS = {"engines/submit.py": {"cli"}}


def part_of(module: str) -> str:
    """The part of the package a dotted module name is in.

    >>> part_of("fhir_cohort.sources.rest"), part_of("fhir_cohort"), part_of("fhir_cohort.cli")
    ('sources', '__init__', 'cli')
    """
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported(path: Path, text: str | None = None) -> set[str]:
    """The parts of the package a source file (``text``: its source, else read) imports,
    relative imports resolved."""
    relative = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = list(relative[:-1])
    found = set()
    tree = ast.parse(path.read_text() if text is None else text)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target == "fhir_cohort":  # from fhir_cohort import x / from .. import x
                found |= {root_name(alias.name) for alias in node.names}
            elif target.startswith("fhir_cohort."):
                found.add(part_of(target))
        elif isinstance(node, ast.Import):
            found |= {part_of(a.name) for a in node.names if a.name.startswith("fhir_cohort")}
    return found


def root_name(name: str) -> str:
    """What ``from fhir_cohort import name`` imports: a part of the package, or a name
    the package's ``__init__`` defines (its version)."""
    is_part = (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()
    return name if is_part else "__init__"


def own_part(path: Path) -> str:
    return part_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))


def upward(path: Path, text: str | None = None) -> list[str]:
    """What a source file imports from above its own layer."""
    name = path.relative_to(PACKAGE).as_posix()
    own = own_part(path)
    allowed = set(LAYERS[: LAYERS.index(own) + 1]) | ENTRY_POINTS.get(name, set())
    return [f"{name} imports {part}" for part in sorted(imported(path, text) - allowed)]


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_part_of_the_package_is_in_a_layer():
    parts = {own_part(path) for path in source_files()}
    assert parts <= set(LAYERS), parts - set(LAYERS)


def test_imports_point_down_the_flow():
    assert [line for path in source_files() for line in upward(path)] == []


def test_an_upward_import_is_caught():
    """The check can fail: sources importing the engines, at module level or in a
    function, and the store importing the trial language through the package."""
    files = PACKAGE / "sources" / "files.py"
    assert upward(files, "from ..engines import embedded\n") == ["sources/files.py imports engines"]
    assert upward(files, "def f():\n    from fhir_cohort.outputs import report\n") == [
        "sources/files.py imports outputs"
    ]
    store = PACKAGE / "store.py"
    assert upward(store, "from . import criteria\n") == ["store.py imports criteria"]
    assert upward(store, "from .criteria.plan import KEPT\n") == ["store.py imports criteria"]
    assert upward(store, "from .sources import RawResource\n") == []
    assert upward(store, "from . import __version__\n") == []
