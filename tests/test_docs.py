"""The docs a newcomer reads: a short README with the set-up first, pages that name no commit, and
links that lead somewhere."""

import re

from tests.structure import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_readme_is_short_and_starts_with_the_two_set_up_commands_ci_runs():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    commands = [line for line in lines[:40] if line.startswith("python3 -m venv")]
    assert len(commands) == 2 and commands[0].endswith("&& dvc repro") and commands[1].endswith("&& pytest")
    ci = (REPO / ".ci" / "run").read_text()  # CI runs what the README tells a user to run
    assert commands[1].removesuffix("pytest") + "{ pytest;" in ci


def test_no_page_names_a_commit():
    found = {p.name: re.findall(r"[0-9a-f]{7,40}", p.read_text()) for p in PAGES}
    assert not {name: hits for name, hits in found.items() if hits}


def test_every_relative_link_of_the_docs_leads_to_a_file():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken
