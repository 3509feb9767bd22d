"""The profiles import: rows go through the validation and the dedupe of the ingest
APIs, in batches, with a busy database retried."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from propel.core import Propel
from propel.db.engine import DatabaseBusy
from propel.ingest.bulk_read import (
    Fingerprint,
    csv_rejects,
    estimated_rows,
    import_connection,
    open_source,
)
from propel.ingest.bulk_rows import (
    PROFILE_REJECTS,
    RejectFile,
    check_columns,
    json_object,
    text_expr,
)
from propel.ingest.bulk_spec import ImportError_, ImportSpec, ImportSummary, short_error
from propel.ingest.records import Invalid

PROFILE_BATCH = 2000


def import_profiles(propel: Propel, account_id: str, spec: ImportSpec, fmt: str,
                    on_progress: Callable[[int, int], None] | None) -> ImportSummary:
    """Profiles go through the same validation as the APIs (typed email, phone, time
    zone; the rest become properties) and the same dedupe: a re-run of the same file
    within the dedupe window adds nothing, and applying an unchanged profile again
    changes nothing after it."""
    from propel.ingest.records import IngestItem, content_id, key_hash
    from propel.ingest.service import ingest_sync
    from propel.profiles import build_update

    if "identity" not in spec.mapping:
        raise ImportError_("map the identity column: --map identity=COLUMN")
    started = time.perf_counter()
    summary = ImportSummary(reject_path=spec.reject_path)
    fingerprint = Fingerprint(spec, fmt)
    fingerprint.start()
    con = import_connection()
    rejects = RejectFile(spec.reject_path, PROFILE_REJECTS, summary)
    columns: list[str] = []

    def wanted(cols: list[str]) -> list[str]:
        check_columns(spec, cols)
        columns.extend(cols)
        return cols

    try:
        src = open_source(con, spec, fmt, wanted)
        id_col = spec.mapping["identity"]
        # Mapped columns under their field names, the others under their own names.
        named = {c: c for c in columns if c != id_col}
        for f, c in spec.mapping.items():
            if f != "identity":
                named[c] = f
        fields = [(f, c) for c, f in named.items()]
        total = estimated_rows(con, spec, fmt, src, fingerprint)
        fingerprint.result()
        scope = orjson.dumps(sorted(spec.mapping.items())).decode()
        bad = f"{src.bad} AS bad, {src.bad_value} AS bad_value" if src.bad else \
            "false AS bad, NULL AS bad_value"
        reader = con.sql(f"SELECT {text_expr(src, id_col)} AS identity, "
                         f"{json_object(src, fields)} AS fields, {bad} FROM {src.view}"
                         ).to_arrow_reader(PROFILE_BATCH)
        for batch in reader:
            items, bad = [], []
            for offset, (identity, text, unreadable, shown) in enumerate(zip(
                    *(c.to_pylist() for c in batch.columns), strict=True)):
                row = summary.rows + offset + 1
                if unreadable:
                    bad.append({"row": row, "reason": "json: not valid JSON",
                                "identity": None, "fields": shown})
                    continue
                values = orjson.loads(text)
                try:
                    update = build_update(identity or None, values)
                except Invalid as exc:
                    bad.append({"row": row, "reason": f"{exc.field}: {exc.reason}",
                                "identity": identity, "fields": text})
                    continue
                record = {"mapping": scope, "identity": identity, "fields": values}
                items.append(IngestItem(key_hash=key_hash(account_id, content_id(record)),
                                        profile=update))
            result = _ingest_retrying(lambda items=items: ingest_sync(
                propel.db, account_id, items, [], "import"))
            summary.accepted += result.accepted
            summary.already_imported += result.duplicates
            summary.rows += batch.num_rows
            if bad:
                rejects.add(pa.Table.from_pylist(bad, schema=PROFILE_REJECTS))
            if on_progress:
                on_progress(summary.rows, max(total, summary.rows))
        if src.csv_rejects and (unreadable := csv_rejects(con)) is not None:
            rejects.add(unreadable.rename_columns(["line", "reason", "fields"]))
            summary.rows += unreadable.num_rows
    except duckdb.Error as exc:
        raise ImportError_(f"cannot read {spec.path.name}: {short_error(exc)}") from None
    finally:
        con.close()
        rejects.close()
    if on_progress:
        on_progress(summary.rows, summary.rows)
    summary.seconds = time.perf_counter() - started
    return summary


def _ingest_retrying(call: Callable[[], Any], attempts: int = 5) -> Any:
    """Every profile write is idempotent (dedupe keys), so a busy database is retried."""
    for attempt in range(attempts):
        try:
            return call()
        except DatabaseBusy:
            if attempt == attempts - 1:
                raise ImportError_("the database stayed busy; run the same import again "
                                   "(profiles already imported are skipped)") from None
            time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")
