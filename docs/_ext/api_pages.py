"""A Sphinx extension that writes the API reference's pages and resolves references to
re-exported names.

Each module gets one page, ``api/generated/<module>.rst``, written when the configuration is
read: its docstring, a table of its public names, and an autodoc entry for every public name
the module itself defines (a module's public names are its ``__all__``, or else the names
without a leading underscore that its source defines at top level). A package's page also
lists the names it re-exports, linked to the module that defines them, so every object is
documented once, under the module that defines it.

A cross-reference to a re-exported name (``dualprop_jax.rules.DualProp``) or to a name that a
module imports (``LayeredNet`` in a signature of ``dualprop_jax.core.energy``) is resolved to
that definition by ``missing-reference``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pathlib
import pkgutil
import re
import types

from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
ROOT = "dualprop_jax"
KIND = {"class": "autoclass", "function": "autofunction", "data": "autodata"}


@functools.cache
def all_modules(root: str = ROOT) -> tuple[str, ...]:
    """Every module of the package, packages first within each level (``__main__`` left out)."""
    package = importlib.import_module(root)
    names = [root]
    for info in pkgutil.walk_packages(package.__path__, root + "."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return tuple(names)


def defined_names(module: types.ModuleType) -> tuple[str, ...]:
    """The public names a module's source defines at top level, in source order."""
    return _defined(module.__name__)


@functools.cache
def _defined(module_name: str) -> tuple[str, ...]:
    module = importlib.import_module(module_name)
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return ()
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    public = [n for n in dict.fromkeys(names) if not n.startswith("_") or n == "__version__"]
    return tuple(public)


def public_names(module: types.ModuleType) -> list[str]:
    """``__all__``, or else the names the module defines."""
    names = getattr(module, "__all__", None)
    return list(names) if names is not None else defined_names(module)


@functools.cache
def canonical(module_name: str, name: str) -> str | None:
    """The full name under which ``module_name.name`` is documented: a module's own name, or
    ``<defining module>.<name>`` for an object a module of the package defines."""
    module = importlib.import_module(module_name)
    obj = getattr(module, name, None)
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    if name in defined_names(module):
        return f"{module_name}.{name}"
    owner = getattr(obj, "__module__", None)
    if isinstance(owner, str) and owner.startswith(ROOT):
        qualname = getattr(obj, "__qualname__", name)
        if qualname == name and name in defined_names(importlib.import_module(owner)):
            return f"{owner}.{name}"
    inside_first = sorted(all_modules(), key=lambda m: not m.startswith(module_name + "."))
    for other in inside_first:  # a constant: the module whose source assigns it (own first)
        mod = importlib.import_module(other)
        if name in defined_names(mod) and getattr(mod, name, None) is obj:
            return f"{other}.{name}"
    return None


ROLE = re.compile(r":[a-z]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")


def summary(full: str) -> str:
    """The first sentence of an object's docstring as plain reStructuredText text (roles and
    literals reduced to their text, markup characters escaped)."""
    module_name, _, name = full.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        obj = importlib.import_module(full)
    if inspect.ismodule(obj) or kind_of(obj, name) != "data":
        doc = inspect.getdoc(obj) or ""
    else:
        attr_docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        doc = "\n".join(attr_docs.get(("", name), []))
    first = doc.strip().split("\n\n")[0].replace("\n", " ")
    first = re.split(r"(?<=[a-z0-9)]\.)\s", first, maxsplit=1)[0]  # up to the first full stop
    first = ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], first).replace("``", "")
    first = first.rstrip(":").rstrip()  # a summary that introduced a block or a list
    for char in "\\*`|_":
        first = first.replace(char, "\\" + char)
    return first


def kind_of(obj: object, name: str | None = None) -> str:
    """The autodoc directive for an object: a class or function under its own name, else data
    (a constant, or a function assigned to another name, documented by its attribute
    docstring)."""
    own = name is None or getattr(obj, "__name__", None) == name
    if inspect.isclass(obj) and own:
        return "class"
    if callable(obj) and hasattr(obj, "__wrapped__") and own:  # a jitted or wrapped function
        return "function"
    if (inspect.isfunction(obj) or inspect.isbuiltin(obj)) and own:
        return "function"
    return "data"


def entry(module_name: str, name: str, obj: object) -> list[str]:
    """The autodoc directive documenting ``module_name.name``."""
    kind = kind_of(obj, name)
    lines = [f".. {KIND[kind]}:: {module_name}.{name}"]
    if kind == "class":
        lines += ["   :members:", "   :show-inheritance:"]
    elif kind == "data" and len(repr(obj)) > 70:
        lines.append("   :no-value:")
    return [*lines, ""]


def page(module_name: str) -> str:
    """The reStructuredText of one module's API page."""
    module = importlib.import_module(module_name)
    own = set(defined_names(module))
    names = public_names(module)
    lines = [module_name, "=" * len(module_name), "", f".. automodule:: {module_name}",
             "   :no-members:", ""]
    table = [canonical(module_name, n) for n in names]
    rows = [t for t in table if t]
    if rows:
        lines += [".. rubric:: Public names", "", ".. list-table::", "   :widths: 30 70", ""]
        for full in rows:
            lines += [f"   * - :py:obj:`~{full}`", f"     - {summary(full)}"]
        lines.append("")
    documented = [n for n in names if n in own]
    if documented:
        lines += [".. rubric:: Reference", ""]
    for name in documented:
        obj = getattr(module, name)
        if not isinstance(obj, types.ModuleType):
            lines += entry(module_name, name, obj)
    return "\n".join(lines)


def write_pages(app, config) -> None:
    """``config-inited``: write ``api/generated/<module>.rst`` for every module (only files
    whose text changed, so incremental builds stay incremental)."""
    out = pathlib.Path(app.srcdir) / "api" / "generated"
    out.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for name in all_modules():
        path = out / f"{name}.rst"
        wanted.add(path)
        text = page(name)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    for stale in set(out.glob("*.rst")) - wanted:
        stale.unlink()


def lookup(path: str, context: str, cls: str | None) -> object | None:
    """The object a (possibly relative) dotted reference names, looked up from the full name,
    the current class, the current module and the package, in that order."""
    prefixes = [""]
    if cls and context:
        prefixes.append(f"{context}.{cls}.")
    if context:
        prefixes.append(f"{context}.")
    prefixes.append(f"{ROOT}.")
    for prefix in prefixes:
        parts = (prefix + path).split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            return obj
    short = path.rsplit(".", 1)[-1]
    homes = [m for m in all_modules() if short in defined_names(importlib.import_module(m))]
    return getattr(importlib.import_module(homes[0]), short) if len(homes) == 1 else None


def documented_name(obj: object, path: str) -> str | None:
    """The full name under which an object of the package is documented."""
    if inspect.ismodule(obj):
        return obj.__name__
    target = obj.fget if isinstance(obj, property) else obj
    owner, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if isinstance(owner, str) and owner.startswith(ROOT) and qualname and "<" not in qualname:
        return f"{owner}.{qualname}"
    short = path.rsplit(".", 1)[-1]
    homes = [m for m in all_modules() if short in defined_names(importlib.import_module(m))]
    same = [m for m in homes if getattr(importlib.import_module(m), short, None) is obj]
    return f"{same[0]}.{short}" if same else None


def resolve(app, env, node, contnode):
    """``missing-reference``: a Python reference to a re-exported, imported, inherited or
    relative name resolves to the entry of its definition."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    obj = lookup(target, node.get("py:module") or "", node.get("py:class"))
    full = documented_name(obj, target) if obj is not None else None
    if not full or full == target:
        return None
    domain = env.get_domain("py")
    for typ in dict.fromkeys([node["reftype"], "obj"]):
        found = domain.resolve_xref(env, node["refdoc"], app.builder, typ, full, node, contnode)
        if found is not None:
            return found
    return None


def setup(app):
    app.connect("config-inited", write_pages)
    app.connect("missing-reference", resolve)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
