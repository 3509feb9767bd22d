"""Settings from ``PROPEL_*`` environment variables, validated at start.

Every field carries a help string: ``propel settings`` prints them, so the
environment is self-documenting (as datasette does with its settings).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROPEL_", extra="ignore")

    data_dir: Path = Field(
        Path("./propel-data"),
        description="Folder for the embedded SQLite database, the Delta lake and the task queue.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the operational database; default SQLite in data_dir. "
        "Use postgresql+psycopg://user@host/db for PostgreSQL.",
    )
    lake_uri: str | None = Field(
        None, description="Path or URI of the Delta event lake; default data_dir/lake."
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL for the task queue; when set, tasks run in `propel worker` "
        "processes instead of inside `propel serve`.",
    )
    account: str | None = Field(None, description="Default account id for CLI commands.")
    secret_key: str | None = Field(
        None,
        description="Key that signs cursors and tokens; generated once into data_dir when unset.",
    )
    sqlite_synchronous: str = Field(
        "FULL",
        description="SQLite synchronous mode. FULL: an acknowledged write survives power loss. "
        "NORMAL: survives a process crash, may lose the last commits on power loss.",
    )
    dedupe_days: int = Field(7, ge=1, le=365, description="How long message ids are remembered.")
    dedupe_settle_keys: int = Field(
        1_000_000, ge=1_000,
        description="SQLite: new message ids wait in dedupe_recent, and in each server "
        "process's memory (about 90 bytes each), until this many have gathered; then the "
        "flusher settles them into dedupe_keys in key order. Larger: fewer, longer settles "
        "and more memory.",
    )
    flush_rows: int = Field(
        50_000, ge=1, description="Flush recent events to the lake once this many are pending."
    )
    flush_seconds: float = Field(
        10.0, gt=0, description="Flush pending events once the oldest is this many seconds old."
    )
    recent_retention_seconds: int = Field(
        3600,
        ge=0,
        description="Flushed rows stay in recent_events this long, so a reader that pinned an "
        "older lake version still sees them; a lake read must finish within it.",
    )
    vacuum_retention_hours: int = Field(
        168, ge=1, description="Lake files no longer referenced are deleted after this long."
    )
    event_loop: str = Field(
        "auto", pattern=r"^(auto|uvloop|asyncio)$",
        description="Event loop of delivery and other asyncio work: auto takes uvloop when it "
        "is installed (it comes with uvicorn[standard]; about a tenth less CPU per message "
        "sent), asyncio the standard library's loop.",
    )
    query_memory_limit: str = Field(
        "2GB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="Memory one lake query (features, scoring, audiences) may use; beyond "
        "it DuckDB spills to PROPEL_DATA_DIR/query-tmp instead of growing.",
    )
    write_queue_limit: int = Field(
        2000,
        ge=1,
        description="Writes waiting for the SQLite writer beyond this answer 503 with Retry-After.",
    )
    write_timeout_seconds: float = Field(
        10.0, gt=0, description="A write that waits longer than this answers 503."
    )
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="The address users' devices reach Propel at: tracking pixels, click "
        "links and unsubscribe links in messages point here.",
    )
    delivery_lease_seconds: int = Field(
        120, ge=1,
        description="A message being sent is leased to its worker this long; if the worker "
        "dies, it is then resent (receivers that deduplicate) or marked in_doubt.",
    )
    consumer_workers: int = Field(2, ge=1, description="Task threads of the in-process consumer.")
    log_format: str = Field("json", description="json or text.")
    faults: str = Field(
        "",
        description="Crash points for fault-injection tests, e.g. "
        "'flush.after_lake_commit=0.2,ingest.after_commit=0.01' (probabilities).",
    )

    @field_validator("sqlite_synchronous")
    @classmethod
    def _known_sync_mode(cls, value: str) -> str:
        value = value.upper()
        if value not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError("must be FULL, NORMAL or EXTRA")
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'propel.db').resolve()}"

    @property
    def resolved_lake_uri(self) -> str:
        return self.lake_uri or str((self.data_dir / "lake").resolve())

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def huey_path(self) -> Path:
        return self.data_dir / "tasks.db"

    def resolved_secret_key(self) -> str:
        """The configured key, or one generated once and kept in data_dir."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()
