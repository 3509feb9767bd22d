"""Imports every folder's tables so that metadata (and Alembic) sees them all."""

from propel.accounts import tables as _accounts  # noqa: F401
from propel.campaigns import tables as _campaigns  # noqa: F401
from propel.db.meta import metadata
from propel.ingest import tables as _ingest  # noqa: F401
from propel.jobs import tables as _jobs  # noqa: F401
from propel.journeys import tables as _journeys  # noqa: F401
from propel.lake import tables as _lake  # noqa: F401
from propel.predictions import tables as _predictions  # noqa: F401
from propel.profiles import tables as _profiles  # noqa: F401

__all__ = ["metadata"]
