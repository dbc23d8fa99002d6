"""Imports point down the package's layers: production code never runs the eager references,
nothing below the training driver imports it, and only the CLI imports the commands."""
from pathlib import Path

import pytest

from tests.hyper.test_layering import imported_modules

ROOT = Path(__file__).resolve().parents[1] / "hyperkd"
PRODUCTION = sorted(p for p in ROOT.rglob("*.py") if "reference" not in p.relative_to(ROOT).parts)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _imports(path: Path, prefix: str) -> list:
    return sorted(n for n in imported_modules(path) if n == prefix or n.startswith(prefix + "."))


@pytest.mark.parametrize("path", PRODUCTION, ids=_rel)
def test_production_code_does_not_import_the_references(path):
    assert not _imports(path, "hyperkd.reference")


@pytest.mark.parametrize("path", sorted(ROOT.joinpath("hyper").glob("*.py")), ids=_rel)
def test_the_hypernetwork_does_not_import_the_driver(path):
    assert not _imports(path, "hyperkd.train")


@pytest.mark.parametrize("path", [p for p in PRODUCTION if p.parent.name != "commands" and p.name != "cli.py"],
                         ids=_rel)
def test_only_the_cli_imports_the_commands(path):
    assert not _imports(path, "hyperkd.commands")


def test_the_layer_check_sees_every_module():
    assert {"train/step.py", "kd/layerkd.py", "runtime.py", "cli.py"} <= {_rel(p) for p in PRODUCTION}
