"""Bulk import (``propel import events|profiles``, ``propel.ingest.bulk.import_file``):
formats, mappings, time formats, typed properties, rejections with reasons, re-runs
and crashes that add nothing twice, clear errors, profiles, and the CDNOW sample."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from propel.cli import app
from propel.core import Propel
from propel.ingest.bulk import import_file
from propel.ingest.bulk_spec import ImportError_, ImportSpec
from propel.lake.reader import count_events, message_ids
from propel.profiles import get_profile

CDNOW = Path(__file__).parent / "data" / "CDNOW_sample.txt"
NOW = int(time.time())
# File parsing does not touch the database: those tests run on the embedded default only;
# the ones that store, re-run, crash or apply profiles run on both databases.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# --- helpers -----------------------------------------------------------------------


def env_of(propel: Propel) -> dict[str, str]:
    s = propel.settings
    env = {"PROPEL_DATA_DIR": str(s.data_dir), "PROPEL_SECRET_KEY": "test-secret",
           "PROPEL_LOG_FORMAT": "text", "PROPEL_FAULTS": ""}
    if s.database_url:
        env["PROPEL_DATABASE_URL"] = s.database_url
    return env


def run_cli(propel: Propel, *args: str) -> tuple[int, str, str]:
    """``propel ARGS`` in-process; (exit code, stdout, stderr) with whitespace folded
    (Rich wraps long lines at the terminal width)."""
    result = CliRunner().invoke(app, list(args), env=env_of(propel))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    fold = lambda text: " ".join(text.split())  # noqa: E731
    return result.exit_code, fold(result.stdout), fold(result.stderr)


def lake_rows(propel: Propel, account_id: str) -> list[dict]:
    table = propel.lake.table()
    if table is None:
        return []
    rows = table.to_pyarrow_table().to_pylist()
    return sorted((r for r in rows if r["account_id"] == account_id),
                  key=lambda r: (r["ts"], r["message_id"]))


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def read_rejects(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- formats and mappings ---------------------------------------------------------


def test_csv_with_mapping_and_constant_name(propel, tenant, tmp_path):
    f = write_csv(tmp_path / "orders.csv", ["customer", "when", "total", "items", "plan", "zip"],
                  [["c1", "2024-03-01T10:00:00Z", "19.99", "2", "gold", "02134"],
                   ["c2", "2024-03-02T11:30:00+02:00", "5", "1", "", "10001"],
                   ["c1", "2024-03-03 08:00:00", "1e3", "3", "free", "94105"]])
    code, out, err = run_cli(propel, "import", "events", str(f), "-a", tenant.id,
                             "--map", "identity=customer", "--map", "ts=when",
                             "--map", "amount=total", "--map", "items=items",
                             "--map", "plan=plan", "--map", "zip=zip",
                             "--event-name", "Charged")
    assert code == 0, err
    assert "3 accepted" in out and "0 rejected" in out
    rows = lake_rows(propel, tenant.id)
    assert [(r["identity"], r["name"], r["ts"]) for r in rows] == [
        ("c1", "Charged", utc(2024, 3, 1, 10)),
        ("c2", "Charged", utc(2024, 3, 2, 9, 30)),
        ("c1", "Charged", utc(2024, 3, 3, 8)),
    ]
    props = [json.loads(r["properties"]) for r in rows]
    # Numbers stay numbers, text stays text, empty fields are left out, "02134" is no number.
    assert props[0] == {"amount": 19.99, "items": 2, "plan": "gold", "zip": "02134"}
    assert props[1] == {"amount": 5, "items": 1, "zip": "10001"}
    assert props[2] == {"amount": 1000.0, "items": 3, "plan": "free", "zip": "94105"}
    assert all(r["source"] == "import" and r["kind"] == "event" for r in rows)
    assert rows[0]["event_date"].isoformat() == "2024-03-01"
    code, out, _ = run_cli(propel, "events", "count", "-a", tenant.id)
    assert (code, out) == (0, "3")
    code, out, _ = run_cli(propel, "events", "count", "-a", tenant.id, "--event", "Charged")
    assert (code, out) == (0, "3")
    code, out, _ = run_cli(propel, "events", "count", "-a", tenant.id, "--event", "Other")
    assert (code, out) == (0, "0")


@SQLITE_ONLY
def test_jsonl_with_name_column_keeps_json_types(propel, tenant, tmp_path):
    f = write_jsonl(tmp_path / "events.jsonl", [
        {"uid": "u1", "event": "Viewed", "at": 1_709_287_200, "price": 9.5, "qty": 2,
         "tags": ["a", "b"], "meta": {"ref": "ad", "n": 1}, "first": True},
        {"uid": 42, "event": "Bought", "at": "2024-03-01T10:00:00Z", "price": "n/a",
         "qty": None},
    ])
    code, out, err = run_cli(propel, "import", "events", str(f), "-a", tenant.id,
                             "--map", "identity=uid", "--map", "name=event", "--map", "ts=at",
                             "--map", "price=price", "--map", "qty=qty", "--map", "tags=tags",
                             "--map", "meta=meta", "--map", "first=first")
    assert code == 0, err
    rows = lake_rows(propel, tenant.id)
    assert [(r["identity"], r["name"], r["ts"]) for r in rows] == [
        ("u1", "Viewed", utc(2024, 3, 1, 10)), ("42", "Bought", utc(2024, 3, 1, 10))]
    assert json.loads(rows[0]["properties"]) == {
        "price": 9.5, "qty": 2, "tags": ["a", "b"], "meta": {"ref": "ad", "n": 1},
        "first": True}
    assert json.loads(rows[1]["properties"]) == {"price": "n/a"}


@SQLITE_ONLY
def test_parquet_with_name_column_and_message_ids(propel, tenant, tmp_path):
    f = tmp_path / "events.parquet"
    pq.write_table(pa.table({
        "user": ["a", "b", "c"],
        "event": ["Open", "Open", "Close"],
        "when": pa.array([1_709_287_200_000_000, 1_709_290_800_000_000,
                          1_709_294_400_000_000], pa.timestamp("us", tz="UTC")),
        "id": ["m1", None, "m3"],
        "score": pa.array([1.5, float("nan"), 3.0]),
        "n": pa.array([1, 2, None], pa.int32()),
        "day": pa.array([19783, 19784, 19785], pa.date32()),
    }), f)
    summary = import_file(propel, tenant.id, ImportSpec(
        kind="events", path=f, mapping={"identity": "user", "name": "event", "ts": "when",
                                        "message_id": "id", "score": "score", "n": "n",
                                        "day": "day"}))
    assert (summary.rows, summary.accepted, summary.rejected) == (3, 3, 0)
    rows = lake_rows(propel, tenant.id)
    assert [r["name"] for r in rows] == ["Open", "Open", "Close"]
    assert rows[0]["message_id"] == "m1" and rows[2]["message_id"] == "m3"
    assert rows[1]["message_id"].startswith("i:")  # none given: derived from file and row
    assert [json.loads(r["properties"]) for r in rows] == [
        {"score": 1.5, "n": 1, "day": "2024-03-01"}, {"n": 2, "day": "2024-03-02"},
        {"score": 3.0, "day": "2024-03-03"}]


@SQLITE_ONLY
@pytest.mark.parametrize(("value", "ts_format", "expected"), [
    ("2024-03-01", None, utc(2024, 3, 1)),
    ("2024-03-01T10:15:30Z", None, utc(2024, 3, 1, 10, 15, 30)),
    ("2024-03-01T10:15:30.250+02:00", None, utc(2024, 3, 1, 8, 15, 30, 250000)),
    ("2024-03-01 10:15:30", None, utc(2024, 3, 1, 10, 15, 30)),
    ("1709287200", None, utc(2024, 3, 1, 10)),
    ("1709287200.5", None, utc(2024, 3, 1, 10, 0, 0, 500000)),
    ("01/03/2024 10:15", "%d/%m/%Y %H:%M", utc(2024, 3, 1, 10, 15)),
    ("20240301", "%Y%m%d", utc(2024, 3, 1)),
    ("1709287200123", "epoch_ms", utc(2024, 3, 1, 10, 0, 0, 123000)),
], ids=["iso-date", "iso-z", "iso-offset", "iso-space", "epoch", "epoch-frac", "custom",
        "yyyymmdd", "epoch-ms"])
def test_time_formats(propel, tenant, tmp_path, value, ts_format, expected):
    f = write_csv(tmp_path / "t.csv", ["who", "ts"], [["u1", value]])
    args = ["import", "events", str(f), "-a", tenant.id, "--map", "identity=who",
            "--map", "ts=ts", "--event-name", "Seen"]
    if ts_format:
        args += ["--ts-format", ts_format]
    code, out, err = run_cli(propel, *args)
    assert code == 0, err
    assert "1 accepted" in out, out
    assert [r["ts"] for r in lake_rows(propel, tenant.id)] == [expected]


@SQLITE_ONLY
def test_epoch_numbers_in_parquet(propel, tenant, tmp_path):
    f = tmp_path / "e.parquet"
    pq.write_table(pa.table({"who": ["a", "b"], "at": [1_709_287_200, 1_709_287_260]}), f)
    summary = import_file(propel, tenant.id, ImportSpec(
        kind="events", path=f, mapping={"identity": "who", "ts": "at"}, event_name="Seen"))
    assert summary.accepted == 2
    assert [r["ts"] for r in lake_rows(propel, tenant.id)] == [
        utc(2024, 3, 1, 10), utc(2024, 3, 1, 10, 1)]


@SQLITE_ONLY
def test_whitespace_file_without_header(propel, tenant, tmp_path):
    f = tmp_path / "w.txt"
    f.write_text(" 0001  19970101  2   29.33\n0002 19970102 1 9.5\n\n  0001 19970105 3 1\n")
    code, out, err = run_cli(propel, "import", "events", str(f), "-a", tenant.id,
                             "--delimiter", "whitespace", "--no-header",
                             "--map", "identity=column0", "--map", "ts=column1",
                             "--ts-format", "%Y%m%d", "--map", "cds=column2",
                             "--map", "amount=column3", "--event-name", "Charged")
    assert code == 0, err
    rows = lake_rows(propel, tenant.id)
    assert [(r["identity"], r["ts"].date().isoformat(), json.loads(r["properties"]))
            for r in rows] == [("0001", "1997-01-01", {"cds": 2, "amount": 29.33}),
                               ("0002", "1997-01-02", {"cds": 1, "amount": 9.5}),
                               ("0001", "1997-01-05", {"cds": 3, "amount": 1})]


# --- rejections -----------------------------------------------------------------------


def test_bad_rows_are_rejected_with_reasons_and_good_rows_land(propel, tenant, tmp_path):
    future = NOW + 3 * 86_400
    f = write_csv(tmp_path / "mixed.csv", ["user", "ts", "amount"], [
        ["u1", "2024-03-01T00:00:00Z", "1"],          # row 1: good
        ["", "2024-03-01T00:00:00Z", "2"],            # row 2: no identity
        ["u3", "yesterday", "3"],                     # row 3: cannot parse
        ["u4", str(future), "4"],                     # row 4: future
        ["u5", "1709287200000", "5"],                 # row 5: milliseconds
        ["u6", "", "6"],                              # row 6: no ts
        ["u7", "1960-01-01", "7"],                    # row 7: before 1970
        ["u8", "2024-03-02", "8"],                    # row 8: good
    ])
    rejects = tmp_path / "rejects.csv"
    code, out, err = run_cli(propel, "import", "events", str(f), "-a", tenant.id,
                             "--map", "identity=user", "--map", "ts=ts",
                             "--map", "amount=amount", "--event-name", "Charged",
                             "--reject-file", str(rejects))
    assert code == 0, err
    assert "8 rows read" in out and "2 accepted" in out and "6 rejected" in out
    assert str(rejects) in out
    assert [r["identity"] for r in lake_rows(propel, tenant.id)] == ["u1", "u8"]
    got = {int(r["row"]): (r["reason"], r["value"]) for r in read_rejects(rejects)}
    assert got == {
        2: ("identity: is required", ""),
        3: ("ts: cannot parse", "yesterday"),
        4: ("ts: more than a day in the future", str(future)),
        5: ("ts: looks like epoch milliseconds or microseconds; give --ts-format epoch_ms "
            "or epoch_us", "1709287200000"),
        6: ("ts: is required", ""),
        7: ("ts: before 1970", "1960-01-01"),
    }
    by_row = {int(r["row"]): r for r in read_rejects(rejects)}
    assert by_row[3]["identity"] == "u3" and json.loads(by_row[3]["properties"]) == {
        "amount": 3}


@SQLITE_ONLY
def test_default_reject_file_and_unsplittable_csv_lines(propel, tenant, tmp_path):
    f = tmp_path / "broken.csv"
    f.write_text("user,ts,plan\nu1,2024-03-01,a\nu2,2024-03-01,b,extra\nu3,2024-03-01\n"
                 "u4,2024-03-02,d\n")
    code, out, err = run_cli(propel, "import", "events", str(f), "-a", tenant.id,
                             "--map", "identity=user", "--map", "ts=ts", "--map", "plan=plan",
                             "--event-name", "Seen")
    assert code == 0, err
    assert [r["identity"] for r in lake_rows(propel, tenant.id)] == ["u1", "u4"]
    rejects = read_rejects(tmp_path / "broken.csv.rejects.csv")
    assert [(r["line"], r["reason"]) for r in rejects] == [
        ("3", "csv: too many columns"), ("4", "csv: missing columns")]
    assert "2 rejected" in out


@SQLITE_ONLY
def test_identity_and_name_limits(propel, tenant, tmp_path):
    f = write_jsonl(tmp_path / "e.jsonl", [
        {"u": "x" * 300, "n": "A", "t": "2024-03-01"},
        {"u": "ok", "n": "", "t": "2024-03-01"},
        {"u": "ok", "n": "B" * 300, "t": "2024-03-01"},
        {"u": "  ok  ", "n": "  Trimmed ", "t": "2024-03-01"},
    ])
    rejects = tmp_path / "r.csv"
    summary = import_file(propel, tenant.id, ImportSpec(
        kind="events", path=f, mapping={"identity": "u", "name": "n", "ts": "t"},
        reject_path=rejects))
    assert (summary.accepted, summary.rejected) == (1, 3)
    assert summary.reasons == {"identity: too long": 1, "name: is required": 1,
                               "name: too long": 1}
    assert [(r["identity"], r["name"]) for r in lake_rows(propel, tenant.id)] == [
        ("ok", "Trimmed")]


# --- exactly once ----------------------------------------------------------------------


def test_rerun_adds_nothing(propel, tenant, tmp_path):
    f = write_csv(tmp_path / "e.csv", ["u", "t"],
                  [[f"u{i}", f"2024-03-{1 + i % 28:02d}"] for i in range(50)] + [["", "x"]])
    args = ["import", "events", str(f), "-a", tenant.id, "--map", "identity=u",
            "--map", "ts=t", "--event-name", "Seen"]
    code, out, _ = run_cli(propel, *args)
    assert code == 0 and "50 accepted" in out and "1 rejected" in out
    ids = message_ids(propel.db, propel.lake, tenant.id)
    code, out, _ = run_cli(propel, *args)
    assert code == 0
    assert "0 accepted, 50 already imported, 1 rejected" in out
    assert sorted(message_ids(propel.db, propel.lake, tenant.id)) == sorted(ids)
    assert len(set(ids)) == 50
    # The same file for another account, or with other options, is another import.
    code, out, _ = run_cli(propel, *args[:-1], "Other")
    assert "50 accepted" in out
    assert count_events(propel.db, propel.lake, tenant.id) == 100


@SQLITE_ONLY
def test_identical_rows_are_distinct_events(propel, tenant, tmp_path):
    f = write_csv(tmp_path / "dup.csv", ["u", "t", "amount"],
                  [["u1", "2024-03-01", "5"]] * 3)
    summary = import_file(propel, tenant.id, ImportSpec(
        kind="events", path=f, mapping={"identity": "u", "ts": "t", "amount": "amount"},
        event_name="Charged"))
    assert summary.accepted == 3
    assert len(set(message_ids(propel.db, propel.lake, tenant.id))) == 3


def _chunked_file(tmp_path: Path, n: int, bad_every: int = 7) -> tuple[Path, int]:
    rows, good = [], 0
    for i in range(n):
        if i % bad_every == 3:
            rows.append([f"u{i}", "not a time", str(i)])
        else:
            rows.append([f"u{i}", str(1_700_000_000 + i), str(i)])
            good += 1
    return write_csv(tmp_path / "chunks.csv", ["user", "ts", "n"], rows), good


def _import_in_subprocess(propel: Propel, tenant_id: str, path: Path, chunk_rows: int,
                          faults: str) -> subprocess.CompletedProcess:
    script = (
        "import sys; from pathlib import Path\n"
        "from propel.core import Propel\n"
        "from propel.ingest.bulk import import_file\n"
        "from propel.ingest.bulk_spec import ImportSpec\n"
        "p = Propel()\n"
        "s = import_file(p, sys.argv[1], ImportSpec(kind='events', path=Path(sys.argv[2]), "
        "mapping={'identity': 'user', 'ts': 'ts', 'n': 'n'}, event_name='Tick'), "
        "chunk_rows=int(sys.argv[3]))\n"
        "print(s.accepted, s.already_imported, s.rejected)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROPEL_")}
    env.update(env_of(propel), PROPEL_FAULTS=faults)
    return subprocess.run([sys.executable, "-c", script, tenant_id, str(path), str(chunk_rows)],
                          env=env, capture_output=True, text=True, timeout=180)


def test_crash_mid_import_then_rerun_adds_exactly_the_missing_rows(propel, tenant, tmp_path):
    f, good = _chunked_file(tmp_path, 1000)
    # Crash right after the first lake commit (the first chunk is a quarter of
    # chunk_rows): 100 // 4 rows read, their good ones stored.
    proc = _import_in_subprocess(propel, tenant.id, f, 100, "import.after_lake_commit=1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    first = count_events(propel.db, propel.lake, tenant.id)
    assert first == sum(1 for i in range(25) if i % 7 != 3)
    # Again with other chunks (62, 250, ...): crashes after committing rows 26..62.
    proc = _import_in_subprocess(propel, tenant.id, f, 250, "import.after_lake_commit=1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    second = count_events(propel.db, propel.lake, tenant.id)
    assert second == sum(1 for i in range(62) if i % 7 != 3)
    # Then to the end: exactly the missing rows are added.
    proc = _import_in_subprocess(propel, tenant.id, f, 100, "")
    assert proc.returncode == 0, proc.stderr
    accepted, already, rejected = map(int, proc.stdout.split())
    assert (accepted, already) == (good - second, second)
    assert rejected == 1000 - good
    ids = message_ids(propel.db, propel.lake, tenant.id)
    assert len(ids) == len(set(ids)) == good
    # And once more: nothing.
    summary = import_file(propel, tenant.id, ImportSpec(
        kind="events", path=f, mapping={"identity": "user", "ts": "ts", "n": "n"},
        event_name="Tick"), chunk_rows=333)
    assert (summary.accepted, summary.already_imported) == (0, good)
    assert count_events(propel.db, propel.lake, tenant.id) == good


@SQLITE_ONLY
def test_progress_and_chunks(propel, tenant, tmp_path):
    f, good = _chunked_file(tmp_path, 500)
    seen: list[tuple[int, int]] = []
    summary = import_file(propel, tenant.id, ImportSpec(
        kind="events", path=f, mapping={"identity": "user", "ts": "ts"}, event_name="Tick"),
        on_progress=lambda done, total: seen.append((done, total)), chunk_rows=128)
    assert summary.accepted == good
    # A quarter-size first chunk, then full ones; the last call reports the end.
    assert [d for d, _ in seen] == [32, 160, 288, 416, 500, 500]
    assert all(total == 500 for _, total in seen)
    history = propel.lake.table().history()
    assert sum(1 for h in history if h.get("operation") == "WRITE") == 5  # one per chunk


# --- errors ---------------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize(("args", "message"), [
    (["--map", "identity=nope", "--map", "ts=t", "--event-name", "E"],
     "--map identity=nope: e.csv has no column 'nope'; its columns are u, t"),
    (["--map", "ts=t", "--event-name", "E"], "map the identity column: --map identity=COLUMN"),
    (["--map", "identity=u", "--event-name", "E"], "map the ts column: --map ts=COLUMN"),
    (["--map", "identity=u", "--map", "ts=t"], "give the event name"),
    (["--map", "identity=u", "--map", "ts=t", "--event-name", "E", "--format", "xml"],
     "unknown format 'xml': give --format csv, jsonl or parquet"),
    (["--map", "identity=u", "--map", "ts=t", "--event-name", "E", "--ts-format", "YYYY"],
     "--ts-format 'YYYY'"),
    (["--map", "identity", "--event-name", "E"], "--map takes FIELD=COLUMN"),
])
def test_clear_errors(propel, tenant, tmp_path, args, message):
    f = write_csv(tmp_path / "e.csv", ["u", "t"], [["u1", "2024-03-01"]])
    code, out, err = run_cli(propel, "import", "events", str(f), "-a", tenant.id, *args)
    assert code == 2
    assert message in err, err
    assert "Traceback" not in out + err
    assert propel.lake.table() is None


@SQLITE_ONLY
def test_missing_file_and_unknown_extension(propel, tenant, tmp_path):
    code, _, err = run_cli(propel, "import", "events", str(tmp_path / "nope.csv"), "-a",
                           tenant.id, "--map", "identity=u", "--map", "ts=t",
                           "--event-name", "E")
    assert code == 2 and "no file" in err and "Traceback" not in err
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    code, _, err = run_cli(propel, "import", "events", str(odd), "-a", tenant.id,
                           "--map", "identity=u", "--map", "ts=t", "--event-name", "E")
    assert code == 2 and "give --format csv, jsonl or parquet" in err
    code, _, err = run_cli(propel, "import", "profiles", str(tmp_path / "nope.csv"), "-a",
                           tenant.id, "--map", "identity=u")
    assert code == 2 and "no file" in err


@SQLITE_ONLY
def test_unreadable_file_is_a_clear_error(propel, tenant, tmp_path):
    f = tmp_path / "bad.parquet"
    f.write_bytes(b"this is not parquet")
    code, _, err = run_cli(propel, "import", "events", str(f), "-a", tenant.id,
                           "--map", "identity=u", "--map", "ts=t", "--event-name", "E")
    assert code == 2 and "cannot read bad.parquet" in err and "Traceback" not in err
    with pytest.raises(ImportError_):
        import_file(propel, tenant.id, ImportSpec(kind="events", path=f, mapping={
            "identity": "u", "ts": "t"}, event_name="E"))


# --- profiles -------------------------------------------------------------------------


def test_profiles_import_with_typed_fields_and_rejections(propel, tenant, tmp_path):
    f = write_csv(tmp_path / "people.csv",
                  ["user_id", "mail", "mobile", "tz", "plan", "age", "code"], [
                      ["p1", "Ann@Example.com", "+14155550123", "Europe/Paris", "gold", "41",
                       "123"],
                      ["p2", "not-an-email", "+14155550124", "Europe/Paris", "free", "30", ""],
                      ["p3", "c@example.com", "12345", "", "free", "", ""],
                      ["p4", "d@example.com", "", "Mars/Base", "", "", ""],
                      ["", "e@example.com", "", "", "", "", ""],
                      ["p6", "", "", "", "silver", "7", "007"],
                  ])
    rejects = tmp_path / "people.rejects.csv"
    args = ["import", "profiles", str(f), "-a", tenant.id, "--map", "identity=user_id",
            "--map", "email=mail", "--map", "phone=mobile", "--map", "timezone=tz",
            "--reject-file", str(rejects)]
    code, out, err = run_cli(propel, *args)
    assert code == 0, err
    assert "6 rows read" in out and "2 accepted" in out and "4 rejected" in out
    p1 = get_profile(propel.db, tenant.id, "p1")
    assert (p1.email, p1.phone, p1.timezone) == ("ann@example.com", "+14155550123",
                                                  "Europe/Paris")
    # "007" is no number, so the column is text ("123" too); age is a number.
    assert p1.properties == {"plan": "gold", "age": 41, "code": "123"}
    assert get_profile(propel.db, tenant.id, "p6").properties == {
        "plan": "silver", "age": 7, "code": "007"}
    for missing in ("p2", "p3", "p4"):
        assert get_profile(propel.db, tenant.id, missing) is None
    got = {int(r["row"]): r["reason"] for r in read_rejects(rejects)}
    assert got == {2: "email: is not an e-mail address (local-part@domain, without spaces, "
                      "angle brackets or stray quotes)",
                   3: "phone: must be an E.164 number such as +14155550123",
                   4: "timezone: must be an IANA time zone such as Europe/Paris",
                   5: "identity: is required"}
    # A re-run changes nothing.
    code, out, _ = run_cli(propel, *args)
    assert code == 0 and "0 accepted, 2 already imported, 4 rejected" in out
    assert count_events(propel.db, propel.lake, tenant.id, kind="profile") == 2


@SQLITE_ONLY
def test_profiles_from_jsonl_and_parquet(propel, tenant, tmp_path):
    j = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "j1", "email": "j1@example.com", "traits": {"vip": True}, "score": 1.5}])
    summary = import_file(propel, tenant.id, ImportSpec(kind="profiles", path=j,
                                                        mapping={"identity": "id"}))
    assert summary.accepted == 1
    prof = get_profile(propel.db, tenant.id, "j1")
    assert prof.email == "j1@example.com"
    assert prof.properties == {"traits": {"vip": True}, "score": 1.5}
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": [7, 8], "tz": ["Asia/Tokyo", None],
                             "since": pa.array([19783, 19784], pa.date32())}), p)
    summary = import_file(propel, tenant.id, ImportSpec(
        kind="profiles", path=p, mapping={"identity": "id", "timezone": "tz"}))
    assert summary.accepted == 2
    assert get_profile(propel.db, tenant.id, "7").timezone == "Asia/Tokyo"
    assert get_profile(propel.db, tenant.id, "8").properties == {"since": "2024-03-02"}


@SQLITE_ONLY
def test_profiles_errors(propel, tenant, tmp_path):
    f = write_csv(tmp_path / "p.csv", ["id", "email"], [["p1", "a@example.com"]])
    code, _, err = run_cli(propel, "import", "profiles", str(f), "-a", tenant.id,
                           "--map", "email=email")
    assert code == 2 and "map the identity column" in err
    code, _, err = run_cli(propel, "import", "profiles", str(f), "-a", tenant.id,
                           "--map", "identity=user")
    assert code == 2 and "no column 'user'" in err


# --- real data ------------------------------------------------------------------------


def test_cdnow_sample(propel, tenant, tmp_path):
    code, out, err = run_cli(propel, "import", "events", str(CDNOW), "-a", tenant.id,
                             "--delimiter", "whitespace", "--no-header",
                             "--map", "identity=column0", "--map", "ts=column2",
                             "--ts-format", "%Y%m%d", "--map", "cds=column3",
                             "--map", "amount=column4", "--event-name", "Charged",
                             "--reject-file", str(tmp_path / "rejects.csv"))
    assert code == 0, err
    assert "6,919 accepted" in out and "0 rejected" in out
    code, out, _ = run_cli(propel, "events", "count", "-a", tenant.id, "--event", "Charged")
    assert out == "6919"
    rows = lake_rows(propel, tenant.id)
    assert len({r["identity"] for r in rows}) == 2357
    assert len({r["message_id"] for r in rows}) == 6919
    assert min(r["ts"] for r in rows) == utc(1997, 1, 1)
    assert max(r["ts"] for r in rows) == utc(1998, 6, 30)
    first = next(r for r in rows if r["identity"] == "00004")
    assert json.loads(first["properties"]) == {"cds": 2, "amount": 29.33}
    assert sum(json.loads(r["properties"])["cds"] for r in rows) > 6919


@SQLITE_ONLY
def test_malformed_json_lines_are_rejected_one_by_one(propel, tenant, tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_text('{"u": "a", "t": 1709287200, "n": 1}\n'
                 '\n'
                 '{"u": "b", "t": \n'
                 '[1, 2]\n'
                 '{"u": "c", "t": "2024-03-01", "n": {"deep": [1]}}\n')
    rejects = tmp_path / "r.csv"
    summary = import_file(propel, tenant.id, ImportSpec(
        kind="events", path=f, mapping={"identity": "u", "ts": "t", "n": "n"},
        event_name="E", reject_path=rejects))
    assert (summary.rows, summary.accepted, summary.rejected) == (4, 2, 2)
    got = [(r["row"], r["reason"], r["value"]) for r in read_rejects(rejects)]
    assert got == [("2", "json: not valid JSON", '{"u": "b", "t": '),
                   ("3", "identity: is required", "")]
    assert [json.loads(r["properties"]) for r in lake_rows(propel, tenant.id)] == [
        {"n": {"deep": [1]}}, {"n": 1}]


@SQLITE_ONLY
def test_json_array_file(propel, tenant, tmp_path):
    f = tmp_path / "e.json"
    f.write_text(json.dumps([{"u": "a", "t": "2024-03-01"}, {"u": "b", "t": "2024-03-02"}],
                            indent=2))
    summary = import_file(propel, tenant.id, ImportSpec(
        kind="events", path=f, mapping={"identity": "u", "ts": "t"}, event_name="E"))
    assert summary.accepted == 2


@SQLITE_ONLY
def test_whitespace_file_with_header_and_all_rows_rejected(propel, tenant, tmp_path):
    f = tmp_path / "w.txt"
    f.write_text("\n cust   day     n\n a1 20240301 1\n a2 2024-13-45 2\n")
    rejects = tmp_path / "r.csv"
    rejects.write_text("stale\n")
    summary = import_file(propel, tenant.id, ImportSpec(
        kind="events", path=f, delimiter="whitespace", reject_path=rejects,
        mapping={"identity": "cust", "ts": "day", "n": "n"}, event_name="E", ts_format="%Y%m%d"))
    assert (summary.accepted, summary.rejected) == (1, 1)
    assert [(r["row"], r["reason"], r["value"]) for r in read_rejects(rejects)] == [
        ("2", "ts: cannot parse", "2024-13-45")]
    # Nothing rejected on the re-run of a good file: the old reject file goes away.
    good = tmp_path / "good.txt"
    good.write_text("cust day\nb1 20240302\n")
    summary = import_file(propel, tenant.id, ImportSpec(
        kind="events", path=good, delimiter="whitespace", reject_path=rejects,
        mapping={"identity": "cust", "ts": "day"}, event_name="E", ts_format="%Y%m%d"))
    assert (summary.accepted, summary.rejected) == (1, 0)
    assert not rejects.exists()
