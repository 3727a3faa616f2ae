"""Griffe extension for the docs build: Sphinx roles in docstrings become cross-references.

metakd's docstrings name other objects with Sphinx roles (``:class:`metakd.meta.MAMLWrapper```,
``:func:`fit```, ``:class:`~metakd.data.base.ImageArray```). This extension rewrites each role,
while the package is loaded, into a Markdown cross-reference ``[`X`][path]`` that mkdocs-autorefs
resolves, where ``path`` is where the API pages document that object (``metakd.meta.X``
rather than the module that defines it). A target that the API pages do not document (a private
helper, a module, a torch class) is left as inline code, so the strict build never meets an
unresolvable reference.

A config class composed from parts (:func:`metakd.recipes.fields.compose_doc`) is documented
with its composed docstring, the entries of its parts' fields included.

Targets are resolved by importing them: as written, then relative to the docstring's module
and class, so ``:func:`fit``` inside :mod:`metakd.engine.trainer` finds
``metakd.engine.fit``. Used from ``mkdocs.yml`` (``extensions: [docs/griffe_roles.py]``).
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import griffe

PACKAGES = ("metakd.data", "metakd.nn", "metakd.meta", "metakd.engine", "metakd.recipes", "metakd")
EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|data|exc|obj):`(~?)\.?([\w.]+)(?:\(\))?`")


def documented_paths() -> dict[int, str]:
    """``id(object) -> documented path`` for every name in the API pages (and class members).

    Sub-packages come first, so an object exported by both ``metakd`` and ``metakd.meta``
    links to its sub-package's page.
    """
    paths: dict[int, str] = {}
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for name in pkg.__all__:
            obj = getattr(pkg, name)
            if isinstance(obj, (str, int, float, tuple, frozenset)):
                continue  # constants: identity is not meaningful (interned values)
            path = f"{pkg_name}.{name}"
            paths.setdefault(id(obj), path)
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    # members the page renders: public, with a docstring of their own
                    documented = getattr(getattr(value, "__func__", value), "__doc__", None)
                    routine = callable(value) or isinstance(value, (property, classmethod, staticmethod))
                    if routine and documented and not member.startswith("_"):
                        paths.setdefault(id(value), f"{path}.{member}")
    return paths


def _lookup(dotted: str, scopes: list[Any]) -> Any:
    """The object ``dotted`` names, absolute or from one of ``scopes``; ``None`` if none."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):  # absolute: the longest importable module prefix
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for part in parts[i:]:
                obj = inspect.getattr_static(obj, part) if inspect.isclass(obj) else getattr(obj, part)
            return obj
        except AttributeError:
            break
    for scope in scopes:
        obj = scope
        try:
            for part in parts:
                obj = inspect.getattr_static(obj, part) if inspect.isclass(obj) else getattr(obj, part)
            return obj
        except AttributeError:
            continue
    return None


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of the loaded package (see the module doc)."""

    def __init__(self) -> None:
        self.paths: dict[int, str] | None = None

    def _rewrite(self, obj: griffe.Object) -> None:
        if obj.kind is griffe.Kind.CLASS and obj.docstring is not None:
            cls = getattr(importlib.import_module(obj.module.path), obj.name, None)
            if getattr(cls, "__doc_composed__", False):  # a config composed from parts
                obj.docstring.value = inspect.cleandoc(cls.__doc__ or "")
        if obj.docstring is None or ":" not in obj.docstring.value:
            return
        # Google style's examples section is "Examples:"; griffe reads "Example:" as an
        # admonition and renders the doctest as text, so it is renamed here.
        obj.docstring.value = EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
        module = importlib.import_module(obj.module.path)
        scopes: list[Any] = [module]
        if obj.kind is griffe.Kind.CLASS:
            cls = getattr(module, obj.name, None)
            if cls is not None:
                scopes.insert(0, cls)
        elif obj.parent is not None and obj.parent.kind is griffe.Kind.CLASS:
            cls = getattr(module, obj.parent.name, None)
            if cls is not None:
                scopes.insert(0, cls)
        assert self.paths is not None

        def replace(match: re.Match[str]) -> str:
            _, short, target = match.groups()
            text = target.rsplit(".", 1)[-1] if short else target
            found = _lookup(target, scopes)
            path = self.paths.get(id(found)) if found is not None else None
            return f"[`{text}`][{path}]" if path else f"`{text}`"

        obj.docstring.value = ROLE.sub(replace, obj.docstring.value)

    def _walk(self, obj: griffe.Object) -> None:
        self._rewrite(obj)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member)  # type: ignore[arg-type]

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Called once the package is loaded."""
        if self.paths is None:
            self.paths = documented_paths()
        self._walk(pkg)

    on_package_loaded = on_package  # the hook's name in griffe 1.x
