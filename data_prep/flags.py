"""Command-line flags shared by the project's console scripts.

Every tool spells its common flags the same way: ``--input`` (what it reads), ``--output`` (the folder it
writes), ``--overwrite`` and ``--workers``. A flag that was renamed to fit keeps its old spelling as a
hidden alias, so existing commands and scripts still run.
"""

from __future__ import annotations

import argparse


def add_renamed_flag(container, name: str, *old_names: str, **kwargs) -> argparse.Action:
    """``container.add_argument(name, **kwargs)`` that also accepts ``old_names``, unlisted in ``--help``.

    argparse parses through its table of option strings, and prints help and error messages from the
    action's own ``option_strings``: dropping the old names from the latter hides them and nothing else.
    """
    action = container.add_argument(name, *old_names, **kwargs)
    for old in old_names:
        action.option_strings.remove(old)
    return action
