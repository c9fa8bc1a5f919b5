"""The README stays a short first read (at most 12 KB), docs/performance.md at most 10 KB with its tables made
from the committed bench files, and every page the README or the docs link to exists."""
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


def test_performance_page_is_short_and_its_tables_come_from_the_committed_bench_files():
    import bench

    page = (ROOT / "docs" / "performance.md").read_text()
    assert len(page.encode()) <= 10 * 1024
    start = "<!-- made by `python bench.py tables` from docs/bench/*.json; tests/test_docs.py checks it -->\n"
    assert page.split(start)[1].split("<!-- end of tables -->")[0] == bench.performance_tables()
    assert sorted((ROOT / "docs" / "bench").glob("*.json")), "no bench.py --json file committed"
    # Each file is what bench.py --json writes: the command, the machine and the figures of one run.
    for path in (ROOT / "docs" / "bench").glob("*.json"):
        import json

        record = json.loads(path.read_text())
        assert record["command"].startswith("python bench.py ") and record["figures"]
        assert {"cpu", "cores", "keras", "backend"} <= set(record["machine"])
