"""The docstrings' reST cross-reference roles as links on the documentation site (a griffe extension).

The docstrings are written for Sphinx: ``:class:`~vitrieval.index.journal.Write```, ``:meth:`save```,
``:mod:`vitrieval.index.live```. mkdocstrings renders docstrings as Markdown, where such a role would read as the
text ``:class:`` before a code span. Once griffe has loaded the package (``mkdocs.yml``, ``extensions:``), this
extension rewrites every role in every docstring into an mkdocs-autorefs cross-reference. The rule:

- roles ``class func meth attr data mod exc obj const`` (also with the ``py:`` domain) become a cross-reference;
- the target is resolved as Python and Sphinx would: its first name in the scope of the docstring's owner
  (members, imports, the enclosing class and module), the rest appended; a full dotted path into the package is
  followed to the object's canonical path; a name that resolves nowhere (a built-in, another package) stays as
  written; a target wrapped across docstring lines is joined;
- the title is the target as written, or its last name when it starts with ``~``;
- the reference is *optional*: a link where the target is rendered on the site (the API reference), plain code with
  the full path as its tooltip where it is not -- a role naming an undocumented object never fails
  ``mkdocs build --strict``;
- ``:math:`...``` becomes code: the site renders no math offline;
- inside a code block (lines indented 4 deeper after a blank line, as a reST literal block after ``::`` is), which
  cannot hold a link, a role becomes its title.

Double-backtick reST literals need nothing: they are Markdown code spans already.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import griffe

ROLE = re.compile(
    r":(?:py:)?(?P<role>class|func|meth|attr|data|mod|exc|obj|const|math):`(?P<target>[^`]+)`"
)
"""One reST role with its target, which may wrap across docstring lines."""


def convert_roles(text: str, resolve: Callable[[str], str] = str) -> str:
    """``text`` with every reST role rewritten as Markdown (the module's rule), everything else unchanged: an
    optional autoref to ``resolve(target)`` (the target as written, without ``~``; by default itself), code for
    ``:math:``, and in a code block, which can hold no link, the plain title."""
    return "".join(
        ROLE.sub(_plain if code else partial(_autoref, resolve), chunk) for code, chunk in _chunks(text)
    )


def _title(match: re.Match[str]) -> tuple[str, str]:
    """The target of a role as written (joined across lines, without ``~``) and the title it is shown with."""
    if match["role"] == "math":
        math = " ".join(match["target"].split())
        return math, math
    target = "".join(match["target"].split())
    if target.startswith("~"):
        return target[1:], target.rsplit(".", 1)[-1]
    return target, target


def _autoref(resolve: Callable[[str], str], match: re.Match[str]) -> str:
    target, title = _title(match)
    if match["role"] == "math":
        return f"`{title}`"
    return f'<autoref identifier="{resolve(target)}" optional>`{title}`</autoref>'


def _plain(match: re.Match[str]) -> str:
    return _title(match)[1]


def _chunks(text: str) -> Iterator[tuple[bool, str]]:
    """``text`` cut into runs of prose and of code blocks: ``(is_code, run)``, which join back to ``text``.

    A code block, as Markdown reads one (and as a reST literal block after ``::`` is written): after a blank line,
    lines indented 4 or more deeper than the last prose line, with the blank lines among them.
    """
    code_under: int | None = None  # the indent of the prose line before the code block now running
    prose_indent = 0
    after_blank = True
    run: list[str] = []
    run_code = False
    for line in text.splitlines(keepends=True):
        indent = len(line) - len(line.lstrip())
        blank = not line.strip()
        if code_under is not None and not blank and indent < code_under + 4:
            code_under = None
        if code_under is None and after_blank and not blank and indent >= prose_indent + 4:
            code_under = prose_indent
        code = code_under is not None
        if not code and not blank:
            prose_indent = indent
        after_blank = blank
        if code != run_code and run:
            yield run_code, "".join(run)
            run = []
        run_code = code
        run.append(line)
    if run:
        yield run_code, "".join(run)


def scope_resolver(obj: griffe.Object, collection: griffe.ModulesCollection) -> Callable[[str], str]:
    """The full dotted path of a role target written in the docstring of ``obj`` (the module's rule), or the target
    as written when it resolves nowhere; ``collection`` (the loaded modules) follows full dotted paths."""

    def resolve(target: str) -> str:
        try:
            return _path(collection[target])
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            pass
        first, dot, rest = target.partition(".")
        try:
            return obj.resolve(first) + dot + rest
        except griffe.NameResolutionError:
            pass
        scope: griffe.Object | None = obj
        while scope is not None:  # a member a class inherits: griffe's resolve looks at its own members only
            if scope.is_class and first in scope.all_members:
                return _path(scope.all_members[first]) + dot + rest
            scope = scope.parent
        return target

    return resolve


def _path(obj: griffe.Object | griffe.Alias) -> str:
    """Where ``obj`` is defined: an alias's target path, an object's own path."""
    return obj.target_path if obj.is_alias else obj.path


def _documented(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and the objects defined in it, depth first; aliases are skipped (their docstrings live elsewhere)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _documented(member)


class ReSTRoles(griffe.Extension):
    """Rewrites the reST roles of a package's docstrings once the package is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the roles in every docstring of ``pkg``, resolved among the loader's modules."""
        for obj in _documented(pkg):
            if obj.docstring is not None:
                obj.docstring.value = convert_roles(obj.docstring.value, scope_resolver(obj, loader.modules_collection))
                obj.docstring.__dict__.pop("parsed", None)  # a parse cached before the rewrite
