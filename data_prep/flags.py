"""Command-line flags shared by the project's console scripts, and how each runs (``run_tool``).

Every tool spells its common flags the same way: ``--input`` (what it reads), ``--output`` (the folder it
writes), ``--overwrite`` and ``--workers``. A flag that was renamed to fit keeps its old spelling as a
hidden alias, so existing commands and scripts still run.
"""

from __future__ import annotations

import argparse
import logging


def add_renamed_flag(container, name: str, *old_names: str, **kwargs) -> argparse.Action:
    """``container.add_argument(name, **kwargs)`` that also accepts ``old_names``, unlisted in ``--help``.

    argparse parses through its table of option strings, and prints help and error messages from the
    action's own ``option_strings``: dropping the old names from the latter hides them and nothing else.
    """
    action = container.add_argument(name, *old_names, **kwargs)
    for old in old_names:
        action.option_strings.remove(old)
    return action


def add_input_output_flags(parser, input_help: str, output_help: str,
                           overwrite_help: str = "replace an existing --output") -> None:
    """The required ``--input`` and ``--output`` and the ``--overwrite`` switch of a tool that reads one thing
    and writes one folder."""
    parser.add_argument("--input", required=True, help=input_help)
    parser.add_argument("--output", required=True, help=output_help)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)


def run_tool(prog: str, action, errors=(ValueError,)):
    """``action()`` with fairseq's log format; one of ``errors`` exits as ``PROG: error: MESSAGE``."""
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    try:
        return action()
    except errors as err:
        raise SystemExit(f"{prog}: error: {err}") from None
