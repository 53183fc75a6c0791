"""The pages under docs/ that are generated from the program stay in step with it."""

from __future__ import annotations

from pathlib import Path

from support.configuration_doc import render

DOCS = Path(__file__).parent.parent / "docs"


def test_the_configuration_page_lists_every_flag_and_variable_as_the_program_has_them() -> None:
    written = (DOCS / "configuration.md").read_text()
    assert written == render(), "docs/configuration.md is out of date: run `make docs`"
