"""The README stays a short first read (at most 15 KB) and every page it or the docs link to exists."""
import re

from conftest import ROOT


def test_readme_is_short_and_its_links_resolve():
    assert (ROOT / "README.md").stat().st_size <= 15 * 1024
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    linked = set()
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                path = (page.parent / target).resolve()
                assert path.exists(), (page.name, target)
                linked.add(path)
    assert {page.resolve() for page in pages[1:]} <= linked  # no page of docs/ that nothing links to
