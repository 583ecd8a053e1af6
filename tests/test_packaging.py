"""The release files agree with each other: one version number (pyproject.toml's) in the
installed metadata, ``dualprop_jax.__version__``, CITATION.cff and CHANGELOG.md; LICENSE is the
Apache License 2.0 that pyproject.toml declares; CITATION.cff names the software and both papers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import pathlib
import re
import tomllib

import yaml

import dualprop_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# sha256 of the Apache License 2.0's terms (from "TERMS AND CONDITIONS" to "END OF TERMS AND
# CONDITIONS"), whitespace collapsed; the same for Debian's /usr/share/common-licenses/Apache-2.0
APACHE_TERMS_SHA256 = "b316b715c7f48af32f6265b3de80b9656fdbddc57f5854215c8a4c6e0ad42c05"


def changelog_versions(text: str) -> list[str]:
    """The version numbers of a Keep a Changelog file's release headings, top first."""
    return re.findall(r"^## \[(\d+\.\d+\.\d+[^\]]*)\]", text, flags=re.M)


def test_changelog_versions_are_read_from_release_headings():
    text = "# Changelog\n## [Unreleased]\n## [1.2.0] - Unreleased\n### Added\n## [1.1.0] - x\n"
    assert changelog_versions(text) == ["1.2.0", "1.1.0"]


def test_one_version_everywhere():
    version = PYPROJECT["project"]["version"]
    installed = importlib.metadata.version("dualprop-jax")
    assert installed == version, (
        f"the installed metadata says {installed}, pyproject.toml {version}: reinstall "
        "(pip install -e .)"
    )
    assert dualprop_jax.__version__ == version
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert str(citation["version"]) == version
    assert changelog_versions((ROOT / "CHANGELOG.md").read_text())[0] == version
    assert "version" not in PYPROJECT["project"].get("dynamic", [])


def test_an_uninstalled_source_tree_reads_its_pyproject(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    source_tree = pathlib.Path(dualprop_jax.__file__).resolve().parents[2] == ROOT
    expected = PYPROJECT["project"]["version"] if source_tree else "0+unknown"
    assert dualprop_jax._distribution_version() == expected


def test_license_is_the_apache_license_2():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    start = text.index("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION")
    end = text.index("END OF TERMS AND CONDITIONS") + len("END OF TERMS AND CONDITIONS")
    terms = " ".join(text[start:end].split())
    for n, title in enumerate(
        ["Definitions", "Grant of Copyright License", "Grant of Patent License",
         "Redistribution", "Submission of Contributions", "Trademarks",
         "Disclaimer of Warranty", "Limitation of Liability",
         "Accepting Warranty or Additional Liability"],
        start=1,
    ):  # fmt: skip
        assert f"{n}. {title}." in terms
    assert hashlib.sha256(terms.encode()).hexdigest() == APACHE_TERMS_SHA256
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]


def test_citation_names_the_software_and_both_papers():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["title"] == PYPROJECT["project"]["name"]
    assert citation["license"] == PYPROJECT["project"]["license"]
    papers = {ref["title"]: ref for ref in citation["references"]}
    dp = papers["Dual Propagation: Accelerating Contrastive Hebbian Learning with Dyadic Neurons"]
    top = papers["Two Tales of Single-Phase Contrastive Hebbian Learning"]
    assert (dp["year"], dp["volume"], top["year"], top["volume"]) == (2023, 202, 2024, 235)
    assert [a["family-names"] for a in dp["authors"]] == ["Høier", "Staudt", "Zach"]
    assert [a["family-names"] for a in top["authors"]] == ["Høier", "Zach"]
