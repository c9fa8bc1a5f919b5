"""The README stays a short first read (at most 12 KB) and every page it or the docs link to exists."""
import re

from conftest import ROOT


def test_readme_is_short_and_its_links_resolve():
    assert (ROOT / "README.md").stat().st_size <= 12 * 1024
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    linked = set()
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                path = (page.parent / target).resolve()
                assert path.exists(), (page.name, target)
                linked.add(path)
    assert {page.resolve() for page in pages[1:]} <= linked  # no page of docs/ that nothing links to


def test_no_committed_file_names_a_machine_s_home_folder():
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        import pytest

        pytest.skip("not a git checkout")
    for name in files:
        path = ROOT / name
        if path.suffix in {".md", ".json", ".yaml", ".csv", ".py", ".ipynb", ".sh", ".txt"} and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            assert "/" + "root/" not in text and "/" + "home/" not in text, name
