"""The documentation site builds from the repository, and its API reference has an entry for
every public name of ``dualprop_jax`` and ``dualprop_jax.rules``.

The build here skips the notebooks (CI builds the whole site, notebooks executed, with warnings
as errors, in ``.ci/run``); it keeps ``-W -n``, so a broken reference or a public name without a
docstring fails this test too. The oracle for an entry is where Python says an object lives:
``obj.__module__ + "." + obj.__qualname__`` for a class or function, ``module-<name>`` for a
module, and the package's own page for what the package itself defines.
"""

from __future__ import annotations

import html
import importlib
import inspect
import os
import pathlib
import pkgutil
import re
import subprocess
import sys
import types

import pytest

import dualprop_jax
from dualprop_jax import rules

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = (dualprop_jax, rules)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, DUALPROP_DOCS_EXECUTE="off", JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
           "-d", str(out / "doctrees"), str(ROOT / "docs"), str(out / "html")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out / "html"


def expected_anchor(package: types.ModuleType, name: str) -> str:
    """Where the entry of ``package.name`` must be: the defining module's anchor of it."""
    obj = getattr(package, name)
    if inspect.ismodule(obj):
        return f"module-{obj.__name__}"
    function = inspect.isfunction(inspect.unwrap(obj)) if callable(obj) else False
    if (inspect.isclass(obj) or function) and getattr(obj, "__name__", "") == name:
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"{defining_module(package, name)}.{name}"  # a value: where the source assigns it


def defining_module(package: types.ModuleType, name: str) -> str:
    """The module of ``package`` (itself or a submodule) whose source assigns ``name`` at top
    level to the object ``package.name`` is."""
    obj = getattr(package, name)
    submodules = pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    for info in [None, *(m for m in submodules if not m.name.endswith("__main__"))]:
        module = package if info is None else importlib.import_module(info.name)
        source = inspect.getsource(module)
        if re.search(rf"^{re.escape(name)}\s*(:[^=]+)?=", source, re.M) and (
            getattr(module, name, None) is obj
        ):
            return module.__name__
    raise AssertionError(f"no module of {package.__name__} assigns {name}")


def anchors(page: pathlib.Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', page.read_text()))


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_public_name_has_an_entry(site, package):
    api = site / "api" / "generated"
    every_anchor = set().union(*(anchors(page) for page in api.glob("*.html")))
    package_page = (api / f"{package.__name__}.html").read_text()
    links = {html.unescape(h) for h in re.findall(r'href="([^"]+)"', package_page)}
    missing, unlinked = [], []
    for name in package.__all__:
        anchor = expected_anchor(package, name)
        if anchor not in every_anchor:
            missing.append(name)
        elif not any(link.endswith("#" + anchor) for link in links) and anchor not in anchors(
            api / f"{package.__name__}.html"
        ):
            unlinked.append(name)
    assert not missing, f"no API entry for {package.__name__}.{missing}"
    assert not unlinked, f"{package.__name__}'s page does not link to {unlinked}"


def test_site_has_its_pages(site):
    for page in ("index", "getting_started", "method", "howto/choosing", "howto/new_rule",
                 "results/cost_table", "citing", "api/index"):
        assert (site / f"{page}.html").exists(), page
    # the results are included from the generated file, not copied: the table's own header
    cost = (ROOT / "experiments" / "COST_TABLE.md").read_text().splitlines()[0].lstrip("# ")
    assert cost in html.unescape((site / "results" / "cost_table.html").read_text())
