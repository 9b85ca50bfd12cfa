"""Every ``vitrieval CMD ... --flag`` shown to users (README.md, docs/, each command's --help) names flags that
``CMD``'s parser has, and the help examples stand one per line with no developer path.

A rename (``index --num-workers`` -> ``--workers``, ``evaluate --json FILE`` -> ``-o FILE``) that left an example
behind fails here, naming the file, the command and the flag.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from vitrieval.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
COMMAND = re.compile(r"\bvitrieval\s+(" + "|".join(COMMANDS) + r")\b")
FLAG = re.compile(r"^(--?[A-Za-z][\w-]*)")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


PARSERS = _subparsers(build_parser())


def _joined_lines(text: str) -> list[str]:
    """Lines, a trailing backslash joining the next one (a continued shell command)."""
    return re.sub(r"\\\s*\n\s*", " ", text).splitlines()


def examples(text: str) -> list[tuple[str, list[str]]]:
    """``(command, words)`` of every ``vitrieval CMD ...`` in ``text``: the words up to the end of the code span,
    a comment or another shell command."""
    found = []
    for line in _joined_lines(text):
        for match in COMMAND.finditer(line):
            rest = re.split(r"`|\s#\s|\s#$|\|\s|&&|;\s|\bvitrieval\s", line[match.end():])[0]
            found.append((match.group(1), rest.split()))
    return found


def unknown_flags(command: str, words: list[str]) -> list[str]:
    """The flags among ``words`` that ``command``'s parser (or its sub-command's, e.g. ``datasets check``) lacks."""
    parser = PARSERS[command]
    nested = _subparsers(parser)
    if nested and words and words[0] in nested:
        parser = nested[words[0]]
    known = {s for action in parser._actions for s in action.option_strings}
    bad = []
    for word in words:
        flag = FLAG.match(word.strip("[](){}'\",."))
        if flag and not re.fullmatch(r"-\d.*", flag.group(1)) and flag.group(1).split("=")[0] not in known:
            bad.append(flag.group(1))
    return bad


def _help_texts() -> dict[str, str]:
    texts = {}
    for name, parser in PARSERS.items():
        texts[f"vitrieval {name} --help"] = parser.format_help()
        for sub, nested in _subparsers(parser).items():
            texts[f"vitrieval {name} {sub} --help"] = nested.format_help()
    return texts


SOURCES = {**{str(p.relative_to(ROOT)): p.read_text() for p in DOCS}, **_help_texts()}


def test_the_checker_finds_what_it_should() -> None:
    """The extraction and the check, on made-up lines: a missing flag is found, a comment and a bracket are not."""
    text = ("    vitrieval index --images ./c -o c.idx --num-workers 2  # --not-a-flag\n"
            "Run `vitrieval search --index c.idx q.jpg --jsn` then `vitrieval serve --index c.idx`.\n"
            "    vitrieval evaluate --checkpoint r \\\n        --dataset sop [--pca 128] --bogus=3\n")
    found = examples(text)
    assert [c for c, _ in found] == ["index", "search", "serve", "evaluate"]
    assert [unknown_flags(c, w) for c, w in found] == [[], ["--jsn"], [], ["--bogus"]]  # index's old name: hidden


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_flag_shown_exists(source: str) -> None:
    shown = examples(SOURCES[source])
    bad = [f"vitrieval {c} ... {flag}" for c, words in shown for flag in unknown_flags(c, words)]
    assert not bad, f"{source}: flags that the command does not have: {bad}"


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_help_examples_stand_one_per_line_without_developer_paths(command: str) -> None:
    text = PARSERS[command].format_help()
    for line in text.splitlines():
        if line.lstrip().startswith("vitrieval "):  # two shell lines run together leave a gap before a flag
            assert not re.search(r"\S {3,}--?[a-z]", line), f"vitrieval {command} --help: lines run together: {line}"
    assert not re.search(r"/work/|shared/data|\.\./shared", text), f"vitrieval {command} --help names a developer path"
    shown = re.findall(r"\bDEFAULT_[A-Z_]+|\bvitrieval(?:\.\w+)+\.[A-Z][A-Z0-9_]+", text)
    assert not shown, f"vitrieval {command} --help shows a constant's name instead of its value: {shown}"
