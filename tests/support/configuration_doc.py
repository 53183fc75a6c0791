"""Writes docs/configuration.md from the command line's parser and the settings model, so
that the page lists every flag and variable there is, with the help the program gives.

    .venv/bin/python tests/support/configuration_doc.py > docs/configuration.md

(`make docs` does this; tests/test_docs.py fails when the page is out of date.)"""

from __future__ import annotations

import argparse
import sys

from pydantic_core import PydanticUndefined

from corpus_cache.cli.main import build_parser
from corpus_cache.config import Settings

HEADER = """# Configuration

Every option of every command, and every `CORPUS_CACHE_*` variable. A flag wins over its
variable, and a variable over the default. This page is generated from the program's own
`--help` and settings (`make docs`); a test fails when it falls behind.

Two variables belong to the `anthropic` SDK and are read as it reads them:
`ANTHROPIC_API_KEY` (without it, answers come from the offline emulator) and
`ANTHROPIC_BASE_URL`.
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:  # argparse has no public accessor for its actions
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
        if action.option_strings and action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            names += " (" + ", ".join(f"`{c}`" for c in action.choices) + ")"
        help_text = (action.help or "") % {"default": action.default, "prog": parser.prog}
        rows.append(f"| {names} | {_cell(help_text)} |")
    return rows


def _commands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """Each command's one-line help and parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}
    return {}


def _variable_rows() -> list[str]:
    rows = []
    for name, field in Settings.model_fields.items():
        if name == "corpus":  # every command takes it as --corpus, which it requires
            continue
        if field.default is not PydanticUndefined:
            default = f"`{field.default}`" if field.default is not None else "none"
        elif field.default_factory is not None:
            default = "(computed)"
        else:
            default = "required"
        variable = f"`CORPUS_CACHE_{name.upper()}`"
        rows.append(f"| {variable} | {default} | {_cell(field.description or '')} |")
    return rows


def render() -> str:
    parser = build_parser()
    out = [HEADER, "## `corpus-cache`", "", "| option | meaning |", "|---|---|"]
    out += _option_rows(parser)
    for name, (summary, command) in _commands(parser).items():
        about = _cell(command.description or summary.capitalize() + ".")
        out += ["", f"## `corpus-cache {name}`", "", about, ""]
        out += ["| option | meaning |", "|---|---|", *_option_rows(command)]
    out += ["", "## Variables", "", "| variable | default | meaning |", "|---|---|---|"]
    out += _variable_rows()
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
