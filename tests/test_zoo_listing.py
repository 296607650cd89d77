"""The zoo as users see it: list-archs shows every family, and the README's table has a row for each."""

import re
from pathlib import Path

from rocmforge.registry import architectures

README = Path(__file__).resolve().parents[1] / "README.md"


def _table_archs() -> set[str]:
    text = README.read_text()
    table = text.split("<!-- arch-table -->", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return {re.sub(r"\s*\(.*", "", r.split("|")[1].strip()) for r in rows[1:]}


def test_every_builtin_architecture_has_a_readme_row():
    missing = sorted(set(architectures()) - _table_archs())
    assert not missing, f"README.md's architecture table has no row for {missing}"


def test_readme_rows_name_registered_architectures():
    stale = sorted(_table_archs() - set(architectures()) - {"phi3"})
    assert not stale, f"README.md's architecture table lists {stale}, which nothing registers"


def test_every_architecture_declares_tiny_models():
    bare = sorted(name for name, spec in architectures().items() if not spec.recipe_obj.tiny)
    assert not bare, f"architectures without tiny conformance models: {bare}"
