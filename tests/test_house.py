"""The house rules the code keeps: it cites only docs/ pages and sections that exist, names no Markdown file the
repository does not hold, and no source file grows past the size where it starts holding several concepts."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = sorted(p for folder in ("src", "examples", "benchmarks") for p in (ROOT / folder).rglob("*.py"))
CITATION = re.compile(r"docs/([\w-]+\.md)(?:, \"([^\"]+)\")?")
MAX_LINES = 600


def _headings(page: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


def _citations() -> list[tuple[str, str, str | None]]:
    found = []
    for path in CODE:
        # a citation may wrap across lines of a docstring or of a comment
        text = re.sub(r"\s+", " ", re.sub(r"\n\s*#", " ", path.read_text(encoding="utf-8")))
        found += [(str(path.relative_to(ROOT)), page, section) for page, section in CITATION.findall(text)]
    return found


def test_code_cites_docs_pages_and_sections_that_exist():
    citations = _citations()
    assert any(section for _, _, section in citations), "the docstrings cite docs/method.md sections"
    for source, page, section in citations:
        assert (ROOT / "docs" / page).is_file(), f"{source} cites docs/{page}, which does not exist"
        if section:
            headings = _headings(ROOT / "docs" / page)
            assert section in headings, f'{source} cites docs/{page}, "{section}", which is not one of its headings'


def test_headings_are_read_from_the_page(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\ntext # not a heading\n## The EDGE objective\n", encoding="utf-8")
    assert _headings(page) == {"Title", "The EDGE objective"}


# Markdown files the commands write (the demo's report, evaluate's table): named in code and docs, never in the tree.
WRITTEN = {"report.md", "results.md"}


def test_every_markdown_file_named_is_in_the_repository_or_written_by_a_command():
    shipped = CODE + sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    in_tree = {p.name for p in ROOT.rglob("*.md") if ".git" not in p.parts}
    for path in shipped:
        for name in set(re.findall(r"\b[\w-]+\.md\b", path.read_text(encoding="utf-8"))):
            assert name in in_tree | WRITTEN, f"{path.relative_to(ROOT)} names {name}, which is not in the repository"
    code = "".join(p.read_text(encoding="utf-8") for p in CODE)
    assert all(f'"{name}"' in code for name in WRITTEN), "each written Markdown file is named where it is written"


def test_no_source_file_holds_more_than_one_concepts_worth_of_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in CODE}
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES and name.startswith("src/")}
    assert not too_long, f"split these by concept (at most {MAX_LINES} lines each): {too_long}"
