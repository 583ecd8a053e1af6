"""Sphinx configuration of the dualprop-jax documentation.

Build: ``python -m sphinx -W --keep-going -n -b html docs docs/_build/html`` (what CI runs;
``-W`` turns every warning into an error: a broken link, an unresolved cross-reference, a
notebook cell that fails, a public name without a docstring).
"""

from __future__ import annotations

import os
import pathlib
import sys
from importlib.metadata import version as _version

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "dualprop-jax"
author = "The dualprop-jax developers"
copyright = "2026, the dualprop-jax developers"
release = _version("dualprop-jax")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "docstring_coverage",
    "api_pages",
    "repo_links",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# --- API reference: every public name of dualprop_jax and its submodules --------------------
autosummary_generate = False  # the pages are written by _ext/api_pages.py
autosummary_ignore_module_all = False  # a module's public names are its __all__
autodoc_default_options = {"members": True, "show-inheritance": True, "undoc-members": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # an Attributes: section lists fields; autodoc documents them once
add_module_names = False

# Unresolved references are errors (-n), except names of other libraries: the build runs
# offline, so their inventories (intersphinx) cannot be fetched, and those names stay unlinked.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|flax|nnx|optax|chex|numpy|np|orbax|ocp|matplotlib|tqdm)(\..*)?"),
    (r"py:.*", r"(collections|typing|types|pathlib|os|io|enum|dataclasses|argparse)\..*"),
    (r"py:class", r"(Array|ArrayLike|PyTree|Callable|Iterable|Iterator|Sequence|Mapping|Any)"),
    (r"py:class", r"(dict|list|tuple|float|int|str|bool|bytes|object|type|None|Path|Mesh)"),
    # a type-checking alias (EquilibriumProp | ContrastiveHebbian) that exists only for mypy
    (r"py:class", r"EnergyRule"),
]

# --- MyST and notebooks ---------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("DUALPROP_DOCS_EXECUTE", "force")
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_timeout = 900
nb_execution_show_tb = True

# --- HTML -----------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "dualprop-jax"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": True,
}
# Offline viewing: point DUALPROP_DOCS_MATHJAX at a local MathJax (Debian's libjs-mathjax:
# /usr/share/javascript/mathjax/MathJax.js); by default the CDN's MathJax renders the equations.
if os.environ.get("DUALPROP_DOCS_MATHJAX"):
    mathjax_path = "file://" + os.environ["DUALPROP_DOCS_MATHJAX"]
