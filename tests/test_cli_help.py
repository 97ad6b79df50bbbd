"""The commands' --help: readable as written (no text read as Rich markup, no emoji) and every
option's default shown, as "[default: ...]" or in the option's own help text."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import pytest
import typer.main
from rich.text import Text
from typer.testing import CliRunner

from dropkit.cli import app

runner = CliRunner()
# The app as a command group. Typer's own click (vendored in recent releases) is not imported:
# its classes are read by their attributes.
ROOT: Any = typer.main.get_command(app)
COMMANDS = sorted(ROOT.commands)
# The root's and every command's help, as the words to run: [] is `dropkit --help`.
ALL = [[], *([name] for name in COMMANDS)]


def _help(args: list[str]) -> str:
    """The rendered ``--help``, its box drawing removed and its whitespace collapsed."""
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)  # colours, where a CI forces them
    text = re.sub(r"[\u2500-\u257f]", " ", text)
    return " ".join(text.split())


def _options(name: str) -> list[Any]:
    return [p for p in ROOT.commands[name].params if p.param_type_name == "option"]


def _is_emoji(char: str) -> bool:
    """A pictograph or other symbol (category So) that is not box drawing, or an emoji
    variation selector."""
    code = ord(char)
    if 0x2500 <= code <= 0x257F:  # the panels' frames
        return False
    return unicodedata.category(char) == "So" or code >= 0x1F000 or code in (0xFE0E, 0xFE0F)


def test_the_commands_are_the_documented_ones() -> None:
    assert set(COMMANDS) == {"demo", "sweep", "compare", "report", "check"}


@pytest.mark.parametrize("args", ALL, ids=lambda a: " ".join(a) or "dropkit")
def test_help_has_no_emoji(args: list[str]) -> None:
    text = _help(args)
    assert not [c for c in text if _is_emoji(c)], text


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_no_help_text_is_read_as_markup(name: str | None) -> None:
    """Typer renders help texts as Rich markup: "[word]" would vanish as a style tag and
    ":name:" become an emoji. Every text must come out as written."""
    command = ROOT if name is None else ROOT.commands[name]
    texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
    for text in texts:
        assert Text.from_markup(text).plain == text


@pytest.mark.parametrize("name", COMMANDS)
def test_every_default_is_shown(name: str) -> None:
    """A value's default appears as "[default: ...]"; an option whose default is None (or an
    on/off pair with no fixed default) says in its help text what happens without it. A plain
    flag (default off) needs neither."""
    text = _help([name])
    for option in _options(name):
        flag = option.opts[0]
        if option.required:
            continue
        if option.is_flag and not option.secondary_opts and option.default is False:
            continue
        if option.default is None:
            assert "(default: " in (option.help or ""), f"{name} {flag}: {option.help}"
        else:
            assert option.show_default is not False, f"{name} {flag}"
            assert f"{flag} " in text and f"[default: {option.default}]" in text, (
                f"{name} {flag}: no [default: {option.default}] in {text}"
            )


@pytest.mark.parametrize("name", ["demo", "sweep", "compare"])
def test_out_names_its_default_folder(name: str) -> None:
    (out,) = (o for o in _options(name) if o.name == "out")
    assert f"(default: dropkit-{name}/)" in (out.help or "")
    assert f"(default: dropkit-{name}/)" in _help([name])


def test_report_out_default_is_shown() -> None:
    assert "[default: report.html]" in _help(["report"])


def test_model_option_shows_module_factory() -> None:
    """The regression that started these tests: ":FACTORY:" was shown as a factory emoji."""
    assert "MODULE:FACTORY" in _help(["sweep"])
    assert "MODULE:FACTORY" in _help(["compare"])


def test_compare_epochs_help_states_the_lab_defaults() -> None:
    """compare --epochs' help lists the epochs the lab chooses per model kind and data set."""
    from dropkit.cli import BUILTIN_DATASETS
    from dropkit.lab.api import CUSTOM_KIND, default_epochs

    (epochs,) = (o for o in _options("compare") if o.name == "epochs")
    help_text = " ".join((epochs.help or "").split())
    names = [*BUILTIN_DATASETS, "my.csv"]
    other = default_epochs("my.csv", "mlp")
    assert f"other data {other}" in help_text
    for data in BUILTIN_DATASETS:
        value = default_epochs(data, "mlp")
        assert f"{data} {value}" in help_text or value == other, (data, help_text)
    cnn_rnn = {default_epochs(d, k) for d in names for k in ("cnn", "rnn")}
    assert len(cnn_rnn) == 1 and f"cnn and rnn {cnn_rnn.pop()}" in help_text
    own = {default_epochs(d, CUSTOM_KIND) for d in names}
    assert len(own) == 1 and f"your own model {own.pop()}" in help_text
