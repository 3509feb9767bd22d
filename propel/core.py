"""The Propel object: settings, database and lake, shared by the API, CLI and tasks."""

from __future__ import annotations

from propel import faults
from propel.channels.sealing import Sealer
from propel.db.engine import Database
from propel.db.migrate import upgrade
from propel.lake.store import Lake
from propel.settings import Settings


class Propel:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        if self.settings.is_sqlite:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(
            self.settings.resolved_database_url,
            synchronous=self.settings.sqlite_synchronous,
            queue_limit=self.settings.write_queue_limit,
            write_timeout=self.settings.write_timeout_seconds,
        )
        self.db.sealer = Sealer(self.settings.resolved_secret_key)
        self.lake = Lake(self.settings.resolved_lake_uri,
                         query_memory_limit=self.settings.query_memory_limit,
                         query_temp_dir=str(self.settings.data_dir / "query-tmp"))
        if self.settings.faults:
            faults.arm(self.settings.faults)

    def migrate(self) -> None:
        upgrade(self.db.engine)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Propel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
