from sqlalchemy import BigInteger, Column, Integer, Table

from propel.db.meta import UTCDateTime, metadata

lake_batches = Table(
    "lake_batches",
    metadata,
    Column("batch_no", BigInteger, primary_key=True, autoincrement=False),
    Column("row_count", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("oldest_received_at", BigInteger, nullable=False),
    Column("flushed_at", UTCDateTime()),
)
