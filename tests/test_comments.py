"""Comments say why; figures go stale the day they are written. No comment
or docstring in the package quotes a measurement (a duration, a percentile,
"measured", "N× cheaper", a run count) or a date: those belong in
``loadtests/HISTORY.md`` and ``docs/benchmarks.md``, next to the command
that produced them."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "broadcaster"

FIGURE = re.compile(
    r"\d[\d.,]*\s?(ms|µs|us|ns)\b"  # a duration
    r"|\bmeasured\b(?! from)"
    r"|\bp(50|90|99)\b[^\n]*\d"  # a percentile with a value
    r"|\b\d+(\.\d+)?\s?[x×]\s+(cheaper|faster|slower|more|less)\b"
    r"|\b20\d\d-\d\d-\d\d\b"  # a date
    r"|\b\d+ runs\b|\bmedian of \d"
    r"|\d+(\.\d+)?\s?%\s+(of|more|less|cheaper|faster)\b"
)

#: Lines that name a unit without quoting a measurement, and why.
ALLOWED = {
    # A bound of what a test cannot reach, not a measurement.
    ("event_ids.py", "needs 2**79 ids in 1 ms"),
    # The resolution of a timestamp the code rounds to.
    ("metrics.py", "to 1 ms of rounding up"),
    # The histogram buckets the code defines.
    ("metrics_catalog.py", "0.5 ms to 10 s"),
}


def _texts(path: Path) -> list[tuple[int, str]]:
    """Every comment and docstring line of ``path``, with its line number."""
    source = path.read_text(encoding="utf-8")
    lines = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                first = node.body[0].lineno
                lines += [(first + i, text) for i, text in enumerate(doc.splitlines())]
    return lines


def test_no_comment_or_docstring_quotes_a_figure_or_a_date() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {text.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, text in _texts(path)
        if FIGURE.search(text)
        and not any(path.name == name and part in text for name, part in ALLOWED)
    ]
    assert not found, "figures belong in loadtests/HISTORY.md:\n" + "\n".join(found)


def test_the_check_catches_what_it_is_for() -> None:
    for text in (
        "# publish p99 from 4.8 to 3.9 ms",
        '"""costs ~1.3 µs per adapter"""',
        "# measured at full rate",
        "# ~3x cheaper than the frozen init",
        "# figures of 2026-12-07",
        "# median of 5 runs",
        "# 14 % more CPU per event",
    ):
        assert FIGURE.search(text), text
    for text in ("# what reconciliation lag is measured from", "# a 4 MiB cap", "# 5 % threshold"):
        assert not FIGURE.search(text), text


def test_comments_point_to_the_repositorys_own_docs() -> None:
    """The contract a comment cites is one a reader has: ``docs/``, not a
    document outside the repository."""
    outside = re.compile(r"\bSPEC \d|\.\./shared/")
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {text.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, text in _texts(path)
        if outside.search(text)
    ]
    assert not found, "\n".join(found)
