"""Every ``cardiowatch`` subcommand's ``--help`` is plain text and explains every option."""

from __future__ import annotations

import argparse
import re

import pytest

from models.cli_help import HelpFormatter, plain
from services import cli

# reST that a terminal shows raw: literals, roles (:mod:, :func:, :class:, :meth:, :data:...)
_REST = re.compile(r"``|:(mod|func|class|meth|data|attr|exc|obj|ref|doc):`")


def _parsers(top: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """``top`` and every sub-parser under it, with their prog names."""
    out = [(top.prog, top)]
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                out += _parsers(sub)
    return out


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            missing += [f"{parser.prog} {a.dest}" for a in action._choices_actions if not (a.help or "").strip()]
            continue
        if not (action.help or "").strip():
            missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    return missing


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_is_plain_text_and_every_option_has_help(
        command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import services.quiet_tf

    monkeypatch.setattr(services.quiet_tf, "quiet_tensorflow", lambda environ: False)  # no import hook here
    seen: list[argparse.ArgumentParser] = []
    real = argparse.ArgumentParser.parse_known_args

    def recording(self: argparse.ArgumentParser, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        seen.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", recording)
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command.split(), "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cardiowatch {command}"), out[:200]
    assert seen, f"cardiowatch {command} built no argparse parser"
    parsers = _parsers(seen[0])
    for prog, parser in parsers:
        text = parser.format_help()
        assert isinstance(parser.formatter_class, type) and issubclass(parser.formatter_class, HelpFormatter), prog
        raw = sorted({m.group(0) for m in _REST.finditer(text)})
        assert raw == [], f"{prog} --help shows raw reST {raw}:\n{text}"
    missing = [m for _, p in parsers for m in _undocumented(p)]
    assert missing == [], f"options without help text: {missing}"


def test_plain_reduces_roles_and_literals_to_their_words() -> None:
    assert plain("``cardiowatch evaluate --records DIR``") == "cardiowatch evaluate --records DIR"
    assert plain("see :mod:`services.replay` and :class:`~models.bundle.ModelBundle`") == \
        "see services.replay and ModelBundle"
    assert plain(":func:`the trainer <models.ecg.train.train_ecg>`; :py:data:`NOISE`") == "the trainer; NOISE"
    assert plain("a `single` backtick and 50% stay") == "a `single` backtick and 50% stay"
    # a literal broken over two lines of a docstring
    assert plain("run ``cardiowatch\ndemo`` now") == "run cardiowatch\ndemo now"


def test_defaults_are_shown_unless_the_help_already_names_them() -> None:
    p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    p.add_argument("--rate", type=float, default=2.5, help="per second")
    p.add_argument("--count", type=int, default=3, help="how many (default 3)")
    p.add_argument("--flag", action="store_true", help="a switch")
    p.add_argument("--out", help="where")
    text = " ".join(p.format_help().split())
    assert "per second (default: 2.5)" in text
    assert "how many (default 3)" in text and "(default: 3)" not in text
    assert "a switch" in text and "default: False" not in text
    assert "default: None" not in text


def test_a_description_wider_than_the_terminal_is_wrapped_and_short_lines_are_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    long = "word " * 40
    p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter,
                                description=f"{long}\n\nkept as\nit is\n\n* a list item {long}\n* two")
    text = p.format_help()
    assert max(len(line) for line in text.splitlines()) <= 60
    assert "\nkept as\nit is\n" in text
    assert "\n* two" in text and "\n  word" in text  # a list item wraps under itself
