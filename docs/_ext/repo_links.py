"""A Sphinx extension that resolves the links of Markdown files included from the repository.

The results pages include generated files (``experiments/COST_TABLE.md``, ``BENCHMARKS.md``,
...) as they are, so their links are relative to the included file, not to the page. A link
to a file that a page of this site includes resolves to that page (with its anchor); a link to
another file of the repository (a JSON of raw numbers, a script, a folder) stays as its text,
since the site carries no copy of it. A link to a path that does not exist stays a warning.
"""

from __future__ import annotations

import os
import pathlib
import re

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms.post_transforms import SphinxPostTransform

INCLUDE = re.compile(r"```\{include\}\s+(\S+)")


def included_files(srcdir: pathlib.Path) -> dict[pathlib.Path, str]:
    """Included file (resolved path) -> the docname of the page that includes it."""
    found = {}
    for page in srcdir.rglob("*.md"):
        if "_build" in page.parts:
            continue
        for match in INCLUDE.finditer(page.read_text()):
            target = (page.parent / match.group(1)).resolve()
            found[target] = str(page.relative_to(srcdir).with_suffix("").as_posix())
    return found


class ResolveIncludedLinks(SphinxPostTransform):
    """Resolves the MyST links of included files before MyST's own resolver warns about them."""

    default_priority = 8  # MyST's reference resolver runs at 9

    def run(self, **kwargs) -> None:
        pages = included_files(pathlib.Path(self.app.srcdir))
        for node in list(self.document.findall(addnodes.pending_xref)):
            if node.get("reftype") != "myst" or "://" in node.get("reftarget", ""):
                continue
            source = node.source or ""
            if not source or pathlib.Path(source).resolve() not in pages:
                continue
            replacement = self.resolve(node, pages)
            if replacement is not None:
                node.replace_self(replacement)

    def resolve(self, node, pages):
        """A reference to the including page, the link's text alone, or None (a broken link)."""
        path_part, _, anchor = node["reftarget"].partition("#")
        base = pathlib.Path(node.source).parent
        path = (base / path_part).resolve() if path_part else pathlib.Path(node.source).resolve()
        text = node.children[0].deepcopy() if node.children else nodes.Text(node["reftarget"])
        if path in pages:
            uri = self.app.builder.get_relative_uri(self.env.docname, pages[path])
            uri += f"#{anchor}" if anchor else ""
            ref = nodes.reference("", "", internal=True, refuri=uri)
            ref += text
            return ref
        if os.path.exists(path):
            return text
        return None


def setup(app):
    app.add_post_transform(ResolveIncludedLinks)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
