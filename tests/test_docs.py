"""The documentation's code runs: docs/adding-a-method.md's adapter and its test, as printed."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

from tdabench import registry

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(path: Path) -> list[str]:
    """The ```python code blocks of a markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_the_adding_a_method_example_runs_as_printed(micro, tmp_path, monkeypatch):
    """The page's first block (the WordOverlap adapter, the whole file) and second block (its
    pytest) are executed as they are printed: the adapter is defined, its test registers it and
    runs it end to end on the micro task."""
    page = DOCS / "adding-a-method.md"
    blocks = python_blocks(page)
    assert len(blocks) >= 2, "the page should show the adapter and its test"
    # the adapter's file as a module of its own (as `mypackage/wordoverlap.py` would be), and the
    # registration the doc's test makes undone afterwards, so that no other test sees either
    adapter = types.ModuleType("docs_wordoverlap")
    monkeypatch.setitem(sys.modules, adapter.__name__, adapter)
    monkeypatch.setattr(registry, "_extra_methods", dict(registry._extra_methods))
    # dont_inherit: the page's code runs without this file's `from __future__ import annotations`
    exec(compile(blocks[0], f"{page}:adapter", "exec", dont_inherit=True), adapter.__dict__)
    from tdabench.method import Method

    assert issubclass(adapter.WordOverlap, Method)
    test: dict = {**vars(adapter), "__name__": "docs_test_wordoverlap"}
    exec(compile(blocks[1], f"{page}:test", "exec", dont_inherit=True), test)
    test["test_word_overlap_runs"](micro, tmp_path)
    assert registry.get_method("wordoverlap") is adapter.WordOverlap
    records = list(tmp_path.rglob("wordoverlap-*.json"))
    assert len(records) == 1  # the doc's test really ran the method and wrote its record
    rec = json.loads(records[0].read_text())
    assert rec["method_info"]["family"] == "lexical" and rec["config"] == {"lowercase": True}
