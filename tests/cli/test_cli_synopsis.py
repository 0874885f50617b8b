"""The README's command-line synopsis names every subcommand and every flag the parser has."""

from __future__ import annotations

import argparse
import re

from caffe_tucker.cli.main import build_parser
from conftest import ROOT

INVOCATION = re.compile(r"^\s*(?:python -m caffe_tucker|caffe-tucker)\b(.*)$")


def synopsis_block(readme: str) -> list[str]:
    """The indented lines under ``## Command line``, up to the first paragraph that is not indented."""
    lines = readme.split("## Command line\n", 1)[1].splitlines()
    block = []
    for line in lines:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line)
    return [line for line in block if line.strip()]


def synopsis_entries(block: list[str]) -> dict[str | None, str]:
    """``{subcommand or None (the program's own options): its text}``; a line that does not start
    an invocation continues the one before it."""
    entries: dict[str | None, str] = {}
    current = None
    for line in block:
        m = INVOCATION.match(line)
        if m:
            words = m.group(1).split()
            current = words[0] if words and not words[0].startswith(("-", "[")) else None
            entries[current] = entries.get(current, "") + " " + m.group(1)
        else:
            entries[current] = entries.get(current, "") + " " + line
    return entries


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    """Each option's long forms (its short form where it has none), leaving out --help and hidden
    options (a subcommand's --debug: the program's own, accepted after the subcommand too)."""
    names = []
    for action in parser._actions:
        if (isinstance(action, argparse._HelpAction) or not action.option_strings
                or action.help == argparse.SUPPRESS):
            continue
        long = [s for s in action.option_strings if s.startswith("--")]
        names += long or action.option_strings
    return names


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def mentions(text: str, option: str) -> bool:
    """``option`` as a word of ``text``: ``--batch`` is not found in ``--batch-size``."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def missing_from(readme: str) -> list[str]:
    parser = build_parser()
    entries = synopsis_entries(synopsis_block(readme))
    missing = [f"(program) {o}" for o in option_names(parser) if not mentions(entries.get(None, ""), o)]
    for name, sub in subcommands(parser).items():
        if name not in entries:
            missing.append(f"{name} (no synopsis line)")
            continue
        missing += [f"{name} {o}" for o in option_names(sub) if not mentions(entries[name], o)]
    return missing


def test_readme_synopsis_lists_every_subcommand_and_flag():
    missing = missing_from((ROOT / "README.md").read_text(encoding="utf-8"))
    assert not missing, "the README's synopsis (## Command line) lacks: " + ", ".join(missing)


def test_a_flag_or_subcommand_left_out_of_the_synopsis_is_found():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert missing_from(readme.replace(" [--caffe-timeout S]", "")) == [
        "verify --caffe-timeout", "bench --caffe-timeout", "reproduce --caffe-timeout",
        "sparsify --caffe-timeout", "quantize --caffe-timeout", "profile --caffe-timeout"]
    # --batch is not mistaken for convert's --batch-size
    assert missing_from(readme.replace(" [--batch 1,8]", "")) == ["bench --batch"]
    assert missing_from(readme.replace(" [--debug]", "")) == ["(program) --debug"]
    assert missing_from(readme.replace("caffe_tucker fetch", "caffe_tucker")) == ["fetch (no synopsis line)"]
