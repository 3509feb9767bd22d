from propel.lake.flush import flush_batches
from propel.lake.reader import count_events


def test_events_round_trip_through_flush(client, propel, tenant):
    events = [{"identity": f"u{i}", "name": "App Launched", "message_id": f"m{i}"}
              for i in range(10)]
    r = client.post("/api/v1/events", json={"events": events}, headers=tenant.bearer)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 10
    assert count_events(propel.db, propel.lake, tenant.id) == 10
    flush_batches(propel.db, propel.lake)
    assert count_events(propel.db, propel.lake, tenant.id) == 10
    r = client.post("/api/v1/events", json={"events": events}, headers=tenant.bearer)
    assert r.json() == {"accepted": 0, "duplicates": 10, "rejected": []}
    assert count_events(propel.db, propel.lake, tenant.id) == 10
