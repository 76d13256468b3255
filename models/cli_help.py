"""Command help: module docstrings as plain-text ``--help``, and every option's default shown.

Subcommands use their module docstring (reStructuredText, for the API docs) as the
argparse description. :class:`HelpFormatter` renders it as a terminal reads it:
``\\`\\`cardiowatch demo\\`\\``` becomes ``cardiowatch demo``, ``:mod:`services.replay``` becomes
``services.replay`` (``:func:`~models.noise.add``` becomes ``add``), and it appends
``(default: ...)`` to an option's help unless the help already names its default. It lives
in ``models`` (the lowest layer) so that the trainers in ``models`` and the processes in
``services`` share it.
"""

from __future__ import annotations

import argparse
import re
import textwrap

__all__ = ["HelpFormatter", "plain"]

# :role:`text`, :role:`title <target>`, :role:`~a.b.c`; the role name may be domain:role
_ROLE = re.compile(r":[a-zA-Z]+(?::[a-zA-Z]+)?:`([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", flags=re.DOTALL)
_TITLED = re.compile(r"^(.*?)\s*<[^<>]+>$", flags=re.DOTALL)


def _role_text(match: re.Match[str]) -> str:
    text = match.group(1)
    titled = _TITLED.match(text)
    if titled and titled.group(1):
        return titled.group(1)
    if text.startswith("~"):
        return text[1:].rsplit(".", 1)[-1]
    return text


def plain(text: str) -> str:
    """``text`` with reST roles and double-backtick literals reduced to their words.

    >>> plain("``cardiowatch evaluate`` uses :mod:`services.replay` and :func:`~models.noise.add`")
    'cardiowatch evaluate uses services.replay and add'
    """
    return _LITERAL.sub(r"\1", _ROLE.sub(_role_text, text))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's paragraphs and line breaks, strips its reST, shows defaults.

    A line of the description wider than the terminal is wrapped (a one-line description
    stays readable). A default is shown for options whose default is not ``None``,
    ``False`` or suppressed, unless the help text already says ``default``.
    """

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain(text))

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for para in re.split(r"\n[ \t]*\n", text):
            lines = para.splitlines()
            if all(len(indent + line) <= width for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            elif not any(line.startswith((" ", "\t", "* ", "- ")) for line in lines):  # prose: reflow it
                paragraphs.append(textwrap.fill(" ".join(lines), width, initial_indent=indent,
                                                subsequent_indent=indent, break_on_hyphens=False))
            else:  # a list or an indented block: wrap only the lines that are too wide
                paragraphs.append("\n".join(
                    textwrap.fill(line.strip(), width, initial_indent=indent + line[:len(line) - len(line.lstrip())],
                                  subsequent_indent=indent + line[:len(line) - len(line.lstrip())] + "  ",
                                  break_on_hyphens=False)
                    if len(indent + line) > width else indent + line for line in lines))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain(action.help or "")
        default = action.default
        if (action.option_strings and default is not None and default is not False
                and default is not argparse.SUPPRESS and "default" not in text.lower()
                and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            text += " (default: %(default)s)"
        return text
