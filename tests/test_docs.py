"""The README and docs/ say what the code says: their copies of facts (versions, options, the
demo's CPU flags) are checked against the one source, links resolve, and no page tells history."""
import re

import pytest

from conftest import ROOT
from minicpmv_ft.versions import VERSIONS as REGISTRY
from minicpmv_ft.versions.environments import for_version

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of each row of the table whose header starts with `first_cell`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell}"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_readme_is_a_five_minute_read():
    assert len((ROOT / "README.md").read_text().splitlines()) < 250


def test_readme_lists_every_registry_version_with_its_checkpoints_and_aliases():
    rows = table_rows((ROOT / "README.md").read_text(), "checkpoint (hub id)")
    assert [row[0] for row in rows] == [v.checkpoints for v in REGISTRY.values()]
    assert [row[1] for row in rows] == [", ".join(f"`{name}`" for name in v.names) for v in REGISTRY.values()]
    assert [row[2] for row in rows] == [f"`{for_version(name).venv}`" for name in REGISTRY]  # the environments table


def test_checkpoints_page_lists_every_registry_version_and_its_aliases():
    rows = table_rows((ROOT / "docs" / "checkpoints.md").read_text(), "checkpoint")
    assert [row[1] for row in rows] == [
        f"`{v.name}`" + (f" ({', '.join(f'`{a}`' for a in v.aliases)})" if v.aliases else "") for v in REGISTRY.values()]


def test_options_page_is_written_from_the_declarations():
    import options_doc

    assert (ROOT / "docs" / "options.md").read_text() == options_doc.render(), \
        "docs/options.md is out of date: python tools/options_doc.py"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_reaches_a_file_and_heading(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path) if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in {github_anchor(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(), re.M)}, \
                f"{page.name}: {target} names no heading"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_state_what_is_true_now_not_history(page):
    history = re.compile(r"\b(this session|the session|a session|earlier run|as before|now also|"
                         r"not yet run|so far|it was|used to|previously|no longer|issue \d+)\b", re.I)
    assert [line for line in page.read_text().splitlines() if history.search(line)] == []


def test_no_file_points_outside_the_repository():
    """The repository is what users get: no docstring or page names a folder beside it."""
    files = [p for p in ROOT.rglob("*") if p.suffix in (".py", ".md", ".sh") and ".venv" not in p.parts
             and "demo_output" not in p.parts and p.is_file()]
    assert [str(p.relative_to(ROOT)) for p in files if "../" + "shared" in p.read_text(errors="replace")] == []


def test_the_cpu_recipe_uses_the_demos_flags():
    """docs/training.md's CPU command is the demo's LoRA run: each flag it passes, demo.sh passes too."""
    page = (ROOT / "docs" / "training.md").read_text()
    recipe = page[page.index("## On a CPU"):].split("```sh")[1].split("```")[0]
    demo = (ROOT / "demo.sh").read_text()
    flags = re.findall(r"(--\w+) (\S+)", recipe)
    assert len(flags) >= 10
    for flag, value in flags:
        if flag in ("--version", "--out", "--model", "--data"):  # the tools' own paths
            continue
        assert re.search(rf"{flag} {re.escape(value)}\b", demo), f"{flag} {value} is not demo.sh's"
