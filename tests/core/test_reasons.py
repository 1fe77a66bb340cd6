"""Reason codes: one closed table (status and gRPC code each), and the user-facing table agrees with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from authz.errors import REASONS, AuthzError, Outcome, Reason

REPO = Path(__file__).resolve().parents[2]
_ROW = re.compile(r"^\| (\d{3}) \| ([A-Z_]+) \| (.*) \|$")


def _reason_table() -> dict[Outcome, set[str]]:
    """The docs' reason table (docs/concepts/reasons.md): codes by outcome."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    rows: dict[Outcome, set[str]] = {}
    for page in pages:
        text = page.read_text(encoding="utf-8")
        if "| HTTP | gRPC | codes |" not in text:
            continue
        table = text.split("| HTTP | gRPC | codes |", 1)[1].split("\n\n", 1)[0]
        for line in table.splitlines():
            match = _ROW.match(line)
            if match:
                outcome = next(o for o in Outcome if o.value == (int(match[1]), match[2]))
                rows[outcome] = set(re.findall(r"`([a-z_]+)`", match[3])) & set(Reason)
        return rows
    pytest.fail("no reason table (| HTTP | gRPC | codes |) in README.md or docs/")


def test_every_deny_reason_has_one_outcome_and_ok_has_none() -> None:
    """The table covers every reason but ok; ok is no deny."""
    assert set(REASONS) == set(Reason) - {Reason.OK}
    assert Reason.OK.outcome is None
    assert all(reason.outcome is REASONS[reason] for reason in REASONS)


def test_the_documented_table_is_the_code_table() -> None:
    """Each documented row lists exactly the reasons answered with its status and gRPC code."""
    documented = _reason_table()
    expected: dict[Outcome, set[str]] = {}
    for reason, outcome in REASONS.items():
        expected.setdefault(outcome, set()).add(reason.value)
    assert documented == expected


def test_an_unknown_code_is_refused_at_the_raise() -> None:
    """A code outside the table cannot become a deny (a typo is caught, not answered)."""
    with pytest.raises(ValueError, match="not a deny reason"):
        AuthzError("token_mising")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a deny reason"):
        AuthzError(Reason.OK)
