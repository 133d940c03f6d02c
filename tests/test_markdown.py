"""The shared markdown table writer."""

from __future__ import annotations

from memlab.markdown import markdown_table


def test_header_separator_and_rows():
    table = markdown_table(["a", "b"], [[1, "x"], ["2", None]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2 | None |"]


def test_no_rows_leaves_the_header():
    assert markdown_table(["only"], []) == "| only |\n|---|"
