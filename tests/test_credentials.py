"""Rotating an account's Segment write key and CleverTap passcode (lost or leaked):
the new one works at once, the old one stops; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time

import pytest

from propel.accounts import rotate_passcode, rotate_write_key
from propel.api import auth
from propel.lake.reader import message_ids


def _batch(message_id: str) -> dict:
    return {"batch": [{"type": "track", "messageId": message_id, "userId": "u1",
                       "event": "Opened"}]}


def _ct_event(identity: str) -> dict:
    return {"d": [{"type": "event", "identity": identity, "evtName": "Opened",
                   "ts": int(time.time()) - 60}]}


def test_a_rotated_write_key_stops_working_and_the_new_one_works(client, propel, tenant,
                                                                  monkeypatch):
    monkeypatch.setattr(auth, "WRITE_KEY_TTL_SECONDS", 0.5)
    old = tenant.segment_auth
    assert client.post("/v1/batch", json=_batch("before"), auth=old).status_code == 200
    new = (rotate_write_key(propel.db, tenant.id), "")
    assert new != old
    assert client.post("/v1/batch", json=_batch("new-key"), auth=new).status_code == 200
    # A server remembers a key it has found for WRITE_KEY_TTL_SECONDS, then asks again.
    time.sleep(0.6)
    refused = client.post("/v1/batch", json=_batch("old-key"), auth=old)
    assert refused.status_code == 401 and "write key is not valid" in refused.text
    assert sorted(message_ids(propel.db, propel.lake, tenant.id)) == ["before", "new-key"]


def test_a_rotated_passcode_stops_working_at_once(client, propel, tenant):
    old = tenant.clevertap
    assert client.post("/1/upload", json=_ct_event("a"), headers=old).status_code == 200
    new = {**old, "X-CleverTap-Passcode": rotate_passcode(propel.db, tenant.id)}
    assert client.post("/1/upload", json=_ct_event("b"), headers=old).status_code == 401
    assert client.post("/1/upload", json=_ct_event("c"), headers=new).status_code == 200
    # the write key is untouched by a new passcode
    assert client.post("/v1/batch", json=_batch("wk"), auth=tenant.segment_auth
                       ).status_code == 200


def test_rotating_an_unknown_account_is_an_error(propel):
    with pytest.raises(LookupError, match="no account 'AAA-BBB-CCCC'"):
        rotate_write_key(propel.db, "AAA-BBB-CCCC")
    with pytest.raises(LookupError, match="no account"):
        rotate_passcode(propel.db, "AAA-BBB-CCCC")


def test_cli_rotates_and_prints_the_new_secret_once(cli, client, tenant):
    code, out, _ = cli("accounts", "rotate-write-key", "--json")
    assert code == 0
    write_key = json.loads(out)["write_key"]
    assert write_key != tenant.creds.write_key
    assert client.post("/v1/batch", json=_batch("cli"), auth=(write_key, "")).status_code == 200
    code, out, _ = cli("accounts", "rotate-passcode")
    assert code == 0 and "passcode" in out and "Shown once" in out
    passcode = out.split()[1]
    headers = {**tenant.clevertap, "X-CleverTap-Passcode": passcode}
    assert client.post("/1/upload", json=_ct_event("p"), headers=headers).status_code == 200
    code, _, err = cli("accounts", "rotate-passcode", account="AAA-BBB-CCCC")
    assert code == 2 and "no account 'AAA-BBB-CCCC'" in err
