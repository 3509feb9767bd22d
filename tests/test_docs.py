"""The documentation states the numbers the code enforces."""

from pathlib import Path

from propel.ingest import limits

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_limit_is_documented_with_its_value():
    page = (DOCS / "limits.md").read_text()
    for name in dir(limits):
        if name.isupper():
            row = next((line for line in page.splitlines() if f"`{name}`" in line), None)
            assert row is not None, f"{name} is not in docs/limits.md"
            assert f"| {getattr(limits, name)}" in row, f"{name}: docs say {row!r}"
