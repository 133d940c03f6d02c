"""The package's dependencies point one way (DESIGN.md, "Layout"): every ``memlab`` import, at
module level or inside a function, is read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import memlab

PACKAGE = Path(memlab.__file__).parent
LEAVES = {"errors", "paths", "jsonfile", "staging", "locks"}  # importing nothing of ours but errors and staging
# what each part may import besides itself and the leaves ("__init__": ``from memlab import __version__``)
ALLOWED = {
    "ops": set(),
    "mixers": {"ops", "config"},
    "models": {"ops", "mixers", "config", "data", "__init__"},
    "data": {"config"},
    **{leaf: set() for leaf in LEAVES},
}


def part_of(module: str) -> str:
    """``memlab.data.text`` -> ``data``; ``memlab`` and its own names (``memlab.__version__``) -> ``__init__``."""
    parts = module.split(".")
    is_module = len(parts) > 1 and ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file())
    return parts[1] if is_module else "__init__"


def imports(path: Path) -> set[str]:
    """The memlab modules ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("memlab"):
            found |= {f"{node.module}.{a.name}" if node.module == "memlab" else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("memlab")}
    return found


def sources() -> list[tuple[str, Path]]:
    """(part, file) of every module in the package."""
    return [(path.relative_to(PACKAGE).with_suffix("").parts[0], path) for path in sorted(PACKAGE.rglob("*.py"))]


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_lower_part_imports_only_what_is_below_it(part):
    allowed = ALLOWED[part] | {part} | ({"errors", "staging"} if part in LEAVES else LEAVES)
    wrong = {
        f"{path.relative_to(PACKAGE)} imports {module}"
        for owner, path in sources() if owner == part
        for module in imports(path) if part_of(module) not in allowed
    }
    assert not wrong


def test_nothing_imports_the_command_line():
    """But the console script's launcher, which loads it inside its interruption handler."""
    importers = [path.name for owner, path in sources() if owner not in ("cli", "launcher")
                 for m in imports(path) if part_of(m) == "cli"]
    assert not importers


def test_the_reader_sees_function_level_imports(tmp_path):
    """The check is only as good as its reader: an import inside a function counts, and so does
    ``from memlab import <module>``."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from memlab.cli import main\n    import memlab.train.trainer\n"
                      "from memlab import paths, __version__\n")
    found = imports(module)
    assert found == {"memlab.cli", "memlab.train.trainer", "memlab.paths", "memlab.__version__"}
    assert [part_of(m) for m in sorted(found)] == ["__init__", "cli", "paths", "train"]
