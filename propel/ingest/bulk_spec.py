"""What a bulk import is asked to do and what it tells back: the options
(:class:`ImportSpec`), the summary (:class:`ImportSummary`) and the error whose message
says how to fix the file or the options (:class:`ImportError_`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

RESERVED = ("identity", "ts", "name", "message_id")


class ImportError_(Exception):  # noqa: N801 - "ImportError" is a builtin
    """The file or the options cannot be imported; the message says how to fix it."""


@dataclass
class ImportSpec:
    kind: str  # "events" or "profiles"
    path: Path
    mapping: dict[str, str] = field(default_factory=dict)
    event_name: str | None = None
    format: str | None = None
    ts_format: str | None = None
    delimiter: str | None = None
    header: bool = True
    reject_path: Path | None = None


@dataclass
class ImportSummary:
    rows: int = 0
    accepted: int = 0
    already_imported: int = 0
    rejected: int = 0
    seconds: float = 0.0
    reject_path: Path | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0
        lines = [f"{self.rows:,} rows read in {self.seconds:.1f}s ({rate:,.0f} rows/s): "
                 f"{self.accepted:,} accepted, {self.already_imported:,} already imported, "
                 f"{self.rejected:,} rejected"]
        for reason, count in sorted(self.reasons.items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"  {count:,} × {reason}")
        if self.rejected and self.reject_path:
            lines.append(f"rejected rows with reasons: {self.reject_path}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def short_error(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = text.splitlines()
    return "\n".join(lines[:6]) + ("\n..." if len(lines) > 6 else "")
