"""The synthetic shop loaded as if imported, for the feature and prediction tests."""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from propel.core import Propel
from propel.demo.synth import SyntheticApp
from propel.ingest.records import EventRecord, IngestItem, key_hash
from propel.ingest.service import ingest_sync


def load_synthetic(propel: Propel, account_id: str, app: SyntheticApp, users: int, days: int,
                   end: datetime, recent_days: int) -> None:
    """The synthetic shop, as if imported: profile-change records (as ingest writes them)
    and events older than ``recent_days`` straight into the lake, the newer events
    through ingest, so reads see lake ∪ recent."""
    profiles = app.profiles(users, end)
    changes = [orjson.dumps({
        "email": r["email"], "phone": r["phone"], "timezone": r["timezone"],
        "consent": {"email": r["email_opt_in"], "push": r["push_opt_in"],
                    "sms": r["sms_opt_in"]},
        "country": r["country"], "platform": r["platform"]}).decode()
        for r in profiles.to_pylist()]
    events = pa.concat_tables(list(app.events(users, days, end)))
    cut = pa.scalar(end - timedelta(days=recent_days), events.schema.field("ts").type)
    old = events.filter(pc.less(events["ts"], cut))
    n, m = old.num_rows, profiles.num_rows
    ts = pa.concat_arrays([old["ts"].combine_chunks(), profiles["signup_ts"].combine_chunks()])
    propel.lake.append(pa.table({
        "account_id": pa.array([account_id] * (n + m)),
        "event_date": pc.cast(ts, pa.date32()),
        "kind": pa.array(["event"] * n + ["profile"] * m),
        "message_id": pa.concat_arrays([old["message_id"].combine_chunks(), pa.array(
            [f"synth-profile:{i}" for i in profiles["identity"].to_pylist()])]),
        "identity": pa.concat_arrays([old["identity"].combine_chunks(),
                                      profiles["identity"].combine_chunks()]),
        "name": pa.array(old["name"].to_pylist() + ["$profile"] * m),
        "ts": ts, "received_at": ts, "source": pa.array(["test"] * (n + m)),
        "properties": pa.array(old["properties"].to_pylist() + changes),
    }), app_id=f"test-load:{account_id}", version=1)
    new = events.filter(pc.greater_equal(events["ts"], cut))
    micros = pc.cast(new["ts"], pa.int64()).to_pylist()
    items = [IngestItem(key_hash(account_id, mid), event=EventRecord(
        message_id=mid, identity=ident, name=name, ts=t, properties=props))
        for mid, ident, name, props, t in zip(
            new["message_id"].to_pylist(), new["identity"].to_pylist(),
            new["name"].to_pylist(), new["properties"].to_pylist(), micros, strict=True)]
    for start in range(0, len(items), 5000):
        result = ingest_sync(propel.db, account_id, items[start:start + 5000], [], "test")
        assert result.accepted == len(items[start:start + 5000])
