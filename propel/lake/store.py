"""The Delta Lake table of events and profile changes.

One table, partitioned by account and event date. Only the holder of the lake
lease writes to it (flusher, importer, compaction, vacuum).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import TableNotFoundError

LAKE_LEASE = "lake.writer"
FLUSHER_APP = "propel-flusher"

SCHEMA = pa.schema(
    [
        ("account_id", pa.string()),
        ("event_date", pa.date32()),
        ("kind", pa.string()),
        ("message_id", pa.string()),
        ("identity", pa.string()),
        ("name", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()),
        ("properties", pa.string()),
    ]
)
PARTITIONS = ["account_id", "event_date"]
_WRITER_PROPS = WriterProperties(compression="ZSTD")


class Lake:
    def __init__(self, uri: str) -> None:
        self.uri = str(uri)
        self.events_uri = os.path.join(self.uri, "events") if "://" not in self.uri else (
            self.uri.rstrip("/") + "/events"
        )
        if "://" not in self.uri:
            Path(self.uri).mkdir(parents=True, exist_ok=True)

    def table(self, version: int | None = None) -> DeltaTable | None:
        try:
            return DeltaTable(self.events_uri, version=version)
        except TableNotFoundError:
            return None

    def transaction_version(self, app_id: str, table: DeltaTable | None = None) -> int:
        table = table or self.table()
        if table is None:
            return 0
        return table.transaction_version(app_id) or 0

    def append(self, data: pa.Table, *, app_id: str, version: int) -> None:
        """Append with Delta's application-transaction version, so a reader (or a
        restarted writer) can tell exactly which of our batches the table holds."""
        write_deltalake(
            self.events_uri,
            data.cast(SCHEMA),
            mode="append",
            partition_by=PARTITIONS,
            writer_properties=_WRITER_PROPS,
            commit_properties=CommitProperties(
                app_transactions=[Transaction(app_id=app_id, version=version)]
            ),
        )

    def compact(self) -> dict:
        table = self.table()
        if table is None:
            return {}
        return table.optimize.compact(writer_properties=_WRITER_PROPS)

    def vacuum(self, retention_hours: int) -> list[str]:
        table = self.table()
        if table is None:
            return []
        return table.vacuum(
            retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False
        )
