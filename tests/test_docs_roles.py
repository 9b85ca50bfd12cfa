"""The docs site's griffe extension (docs/griffe_roles.py): reST roles in docstrings become autorefs links."""

import importlib.util
import textwrap
from pathlib import Path

import pytest

griffe = pytest.importorskip("griffe")
markdown = pytest.importorskip("markdown")
autorefs = pytest.importorskip("mkdocs_autorefs")

EXTENSION = Path(__file__).resolve().parents[1] / "docs" / "griffe_roles.py"
_spec = importlib.util.spec_from_file_location("griffe_roles", EXTENSION)
roles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(roles)


def ref(identifier: str, title: str) -> str:
    return f'<autoref identifier="{identifier}" optional>`{title}`</autoref>'


@pytest.mark.parametrize("role", ["class", "func", "meth", "attr", "data", "mod", "exc", "obj", "const", "py:class"])
def test_each_role_kind_becomes_an_optional_autoref_titled_as_written(role):
    path = "vitrieval.index.journal.Write"
    assert roles.convert_roles(f"See :{role}:`{path}` here.") == f"See {ref(path, path)} here."


def test_tilde_shows_the_last_name_and_links_the_full_path():
    path = "vitrieval.index.journal.Write"
    assert roles.convert_roles(f":class:`~{path}`") == ref(path, "Write")


def test_a_target_wrapped_across_lines_is_joined_and_the_lines_around_it_kept():
    text = "Implementations: :class:`~vitrieval.runtime.\n    torch_embedder.TorchEmbedder` (the encoder)\nnext line"
    assert roles.convert_roles(text) == (
        f"Implementations: {ref('vitrieval.runtime.torch_embedder.TorchEmbedder', 'TorchEmbedder')} (the encoder)\n"
        "next line"
    )


def test_resolve_gives_the_identifier_and_the_title_stays_as_written():
    full = {"save": "pkg.Encoder.save"}
    text = ":meth:`save` and :func:`~elsewhere.thing`"
    assert roles.convert_roles(text, lambda t: full.get(t, t)) == (
        f"{ref('pkg.Encoder.save', 'save')} and {ref('elsewhere.thing', 'thing')}"
    )


def test_math_becomes_code_and_double_backtick_literals_and_plain_text_are_untouched():
    rest = " and ``n_candidates``, `single`, a: b, no role."
    text = "With :math:`d = x /\n    \\lVert x \\rVert_2`" + rest
    assert roles.convert_roles(text) == "With `d = x / \\lVert x \\rVert_2`" + rest


def test_inside_a_code_block_a_role_becomes_its_title_and_prose_after_it_is_converted_again():
    text = textwrap.dedent("""\
        The rank::

            rank(q) = min{ p }      (as in :func:`~vitrieval.metrics.first_relevant_ranks`)

        then :func:`~vitrieval.metrics.exact_knn`.
        """)
    assert roles.convert_roles(text) == textwrap.dedent(f"""\
        The rank::

            rank(q) = min{{ p }}      (as in first_relevant_ranks)

        then {ref('vitrieval.metrics.exact_knn', 'exact_knn')}.
        """)


def _url_of(known: dict[str, str]):
    def url_mapper(identifier: str) -> tuple[str, None]:
        return known[identifier], None  # KeyError: not rendered on the site

    return url_mapper


def test_rendered_a_documented_target_is_a_link_and_an_undocumented_one_plain_code_without_a_strict_failure():
    text = ":class:`~pkg.shapes.Square` then :func:`~pkg.gone.vanished` and :class:`ValueError`"
    html = markdown.markdown(roles.convert_roles(text))
    fixed, unmapped = autorefs.fix_refs(html, _url_of({"pkg.shapes.Square": "api.html#pkg.shapes.Square"}),
                                        link_titles=False)
    assert fixed == (
        '<p><a class="autorefs autorefs-internal" href="api.html#pkg.shapes.Square"><code>Square</code></a>'
        ' then <span title="pkg.gone.vanished"><code>vanished</code></span>'
        ' and <span title="ValueError"><code>ValueError</code></span></p>'
    )
    assert unmapped == []  # what `mkdocs build --strict` would report as a failure


PACKAGE = {
    "__init__.py": '''\
        """The package: :class:`~pkg.shapes.Square` in :mod:`pkg.shapes`, re-exported as :class:`pkg.Square`."""
        from .shapes import Square
        ''',
    "units.py": '''\
        class Meter:
            """A unit."""
        ''',
    "shapes.py": '''\
        """Shapes in :class:`Meter`."""
        from pkg.units import Meter


        class Base:
            def area(self) -> float:
                """The area."""


        class Square(Base):
            """:meth:`side`, :meth:`area`, :meth:`Square.side`, :class:`ValueError`, :func:`numpy.linalg.norm`."""

            def side(self) -> float:
                """The side of this :class:`Square`; :mod:`~pkg.units`."""
        ''',
}


@pytest.fixture
def package(tmp_path):
    for name, source in PACKAGE.items():
        (tmp_path / "pkg").mkdir(exist_ok=True)
        (tmp_path / "pkg" / name).write_text(textwrap.dedent(source))
    extensions = griffe.load_extensions(f"{EXTENSION}:ReSTRoles")
    return griffe.load("pkg", search_paths=[str(tmp_path)], extensions=extensions)


def test_the_extension_resolves_targets_in_the_docstrings_scope(package):
    assert package.docstring.value == (
        f"The package: {ref('pkg.shapes.Square', 'Square')} in {ref('pkg.shapes', 'pkg.shapes')},"
        f" re-exported as {ref('pkg.shapes.Square', 'pkg.Square')}."  # an alias: its definition's path
    )
    shapes = package["shapes"]
    assert shapes.docstring.value == f"Shapes in {ref('pkg.units.Meter', 'Meter')}."  # an import
    assert shapes["Square"].docstring.value == ", ".join([
        ref("pkg.shapes.Square.side", "side"),  # a member
        ref("pkg.shapes.Base.area", "area"),  # an inherited member
        ref("pkg.shapes.Square.side", "Square.side"),  # the enclosing module's name, then its member
        ref("ValueError", "ValueError"),  # a built-in: as written
        ref("numpy.linalg.norm", "numpy.linalg.norm"),  # another package: as written
    ]) + "."
    assert shapes["Square.side"].docstring.value == (
        f"The side of this {ref('pkg.shapes.Square', 'Square')}; {ref('pkg.units', 'units')}."
    )
