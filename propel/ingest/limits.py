"""Every ingest limit, in one place; docs/limits.md lists the same numbers."""

MAX_EVENT_BYTES = 32 * 1024  # one event / record, serialised
MAX_BATCH_BYTES = 500 * 1024  # a Segment batch body (decompressed)
MAX_BODY_BYTES = 4 * 1024 * 1024  # any request body, decompressed
MAX_BATCH_EVENTS = 1000  # events or records in one API call
MAX_NAME_CHARS = 256  # event names
MAX_IDENTITY_CHARS = 256  # identity, userId, anonymousId, objectId
MAX_MESSAGE_ID_CHARS = 256
MAX_PROPERTIES = 256  # keys in one properties / profile object (top level)
MAX_KEY_CHARS = 128  # property names
MAX_STRING_CHARS = 8 * 1024  # one string value
MAX_DEPTH = 5  # nesting of objects and lists inside properties
MIN_TS_SECONDS = 0  # 1970-01-01
FUTURE_TOLERANCE_SECONDS = 24 * 3600  # events may be stamped up to a day ahead
