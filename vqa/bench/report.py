"""The summary table: one row per measured comparison, and its fixed-width text form."""

from __future__ import annotations

from typing import Any


def summary_row(section: str, measure: str, project, reference, ratio, target=None,
                higher_is_better: bool = True) -> dict:
    """One row of the summary: ``met`` says whether ``ratio`` reaches ``target`` (None without one)."""
    met = None
    if target is not None and ratio is not None:
        met = ratio >= target if higher_is_better else ratio <= target
    return {"section": section, "measure": measure, "project": project, "reference": reference,
            "ratio": ratio, "target": target, "met": met}


def failed_row(section: str, error: str, target=None) -> dict:
    """The row of a section that raised instead of measuring."""
    return summary_row(section, f"FAILED: {error[:60]}", None, None, None, target)


def format_table(rows: list[dict]) -> str:
    """The summary rows as a fixed-width text table."""
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "NO"
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    header = ("section", "measure", "project", "reference", "ratio", "target", "met?")
    lines = [[r["section"], r["measure"], cell(r["project"]), cell(r["reference"]), cell(r["ratio"]),
              cell(r["target"]), cell(r["met"])] for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    text_lines = ["  ".join(str(value).ljust(width) if i < 2 else str(value).rjust(width)
                            for i, (value, width) in enumerate(zip(line, widths))) for line in [header, *lines]]
    text_lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text_lines)


def jsonable(value: Any) -> Any:
    """``value`` with every tuple turned into a list, so it round-trips through JSON unchanged."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value
