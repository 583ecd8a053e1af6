"""A Sphinx extension that warns about a documented public object without a docstring.

autodoc renders an object without a docstring as a bare signature; with ``-W`` this warning
makes such an object fail the build instead, so every public name of the API reference says
what it is.
"""

from __future__ import annotations

import inspect

from sphinx.ext.napoleon import _process_docstring
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
KINDS = ("module", "class", "function", "method", "exception", "data", "attribute", "property")


def _is_type_doc(obj, lines) -> bool:
    """Whether ``lines`` are the docstring of ``type(obj)`` rather than of the name itself."""
    type_doc = inspect.getdoc(type(obj)) or ""
    text = "\n".join(lines).strip()
    return bool(text) and bool(type_doc) and type_doc.strip().startswith(text.split("\n")[0])


def _check(app, what, name, obj, options, lines):
    """``autodoc-process-docstring`` handler: warn when a public object's docstring is empty."""
    short = name.rsplit(".", 1)[-1]
    if what not in KINDS or short.startswith("_"):
        return
    if what in ("data", "attribute") and _is_type_doc(obj, lines):
        del lines[:]  # autodoc's fallback: the docstring of the value's type (dict, int, ...)
    if not any(line.strip() for line in lines):
        LOGGER.warning(
            "public name without a docstring: %s (%s)", name, what, type="docstring"
        )


def _napoleon_except_data(app, what, name, obj, options, lines):
    """Napoleon's docstring processing for everything but data, attributes and properties,
    whose docstrings here are prose: Napoleon would read the text before a colon as a type."""
    if what not in ("data", "attribute", "property"):
        _process_docstring(app, what, name, obj, options, lines)


def setup(app):
    app.setup_extension("sphinx.ext.napoleon")
    listeners = app.events.listeners.get("autodoc-process-docstring", [])
    for listener in list(listeners):
        if listener.handler is _process_docstring:
            app.disconnect(listener.id)
    app.connect("autodoc-process-docstring", _napoleon_except_data)
    app.connect("autodoc-process-docstring", _check)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
