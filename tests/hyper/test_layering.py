"""The hypernetwork's production modules sit below the training driver and never run the eager
references: ``hyperkd.hyper`` imports neither ``hyperkd.train`` nor ``hyperkd.reference``, and
neither do the generation op and the runtime helpers it uses."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "hyperkd"
MODULES = sorted(ROOT.joinpath("hyper").glob("*.py")) + [ROOT / "ops" / "hyper_generate.py", ROOT / "runtime.py",
                                                         ROOT / "commands" / "plan.py"]
FORBIDDEN = {"hyperkd.train": "the training driver", "hyperkd.reference": "the eager references"}


def imported_modules(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_production_module_imports_neither_train_nor_reference(path):
    for name in imported_modules(path):
        for prefix, what in FORBIDDEN.items():
            assert not (name == prefix or name.startswith(prefix + ".")), f"{path.name} imports {what}: {name}"


def test_the_check_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from hyperkd import reference\nfrom hyperkd.train import distributed\n")
    assert {"hyperkd.reference", "hyperkd.train.distributed"} <= imported_modules(module)
