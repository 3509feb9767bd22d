"""``propel channels set|show|test``."""

import json

import pytest
from typer.testing import CliRunner

from propel.cli import app


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_set_show_and_test_a_channel(propel, tenant, settings, monkeypatch, smtp_peer):
    monkeypatch.setenv("PROPEL_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PROPEL_ACCOUNT", tenant.id)
    run = CliRunner().invoke
    r = run(app, ["channels", "set", "email", json.dumps({
        "host": "127.0.0.1", "port": smtp_peer.port, "security": "none",
        "from_address": "shop@example.com"})])
    assert r.exit_code == 0, r.output
    shown = run(app, ["channels", "show", "email"])
    assert shown.exit_code == 0 and "shop@example.com" in shown.output
    r = run(app, ["channels", "test", "email", "--to", "ada@example.com"])
    assert r.exit_code == 0, r.output
    assert any("ada@example.com" in str(m) for m in smtp_peer.received)
    bad = run(app, ["channels", "set", "email", json.dumps({"host": "x", "port": 99999,
                                                             "from_address": "a@b.co"})])
    assert bad.exit_code == 1 and "email.port" in bad.output
    assert run(app, ["channels", "set", "email", "{oops"]).exit_code == 2
