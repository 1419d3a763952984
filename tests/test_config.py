"""Configuration: defaults, env overrides, ${ENV} secrets, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, build_config, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_defaults():
    cfg = build_config({}, env={})
    assert cfg.database.url == "sqlite+aiosqlite:///./gateway.db" and cfg.database.is_sqlite
    assert [(a.name, a.platform) for a in cfg.accounts] == [("workbench", "workbench"), ("webchat", "webchat")]
    assert cfg.account("webchat").dev_login is True and len(cfg.account("webchat").secret) >= 16
    assert cfg.server.base_url() == "http://127.0.0.1:8080" and cfg.timezone == "Asia/Shanghai"
    assert cfg.policies.quiet_hours == "22:00-08:00" and cfg.policies.max_pushes.per_week == 3
    assert str(cfg.attribution.member_bounty) == "5.00"


def test_env_overrides_nest_and_address_accounts_by_name():
    env = {
        "GATEWAY__SERVER__PORT": "9001",
        "GATEWAY__POLICIES__QUIET_HOURS": "null",
        "GATEWAY__POLICIES__MAX_PUSHES__PER_WEEK": "5",
        "GATEWAY__ACCOUNTS__WEBCHAT__SECRET": "from-the-environment-123",
    }
    cfg = build_config({}, env=env)
    assert cfg.server.port == 9001 and cfg.policies.quiet_hours is None and cfg.policies.max_pushes.per_week == 5
    assert cfg.account("webchat").secret == "from-the-environment-123"


def test_env_secret_references():
    data = {"accounts": [{"name": "app", "platform": "webchat", "secret": "${APP_SECRET}"}]}
    assert build_config(data, env={"APP_SECRET": "s" * 20}).account("app").secret == "s" * 20
    with pytest.raises(ConfigError) as e:
        build_config(data, env={})
    assert e.value.problems == [("accounts[0].secret", "environment variable APP_SECRET is not set")]


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({"server": {"port": 0}}, "server.port", "greater than or equal to 1"),
        ({"server": {"prot": 1}}, "server.prot", "Extra inputs"),
        ({"database": {"url": "mysql://x"}}, "database.url", "sqlite+aiosqlite"),
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
        ({"policies": {"quiet_hours": "10pm-8am"}}, "policies.quiet_hours", "22:00-08:00"),
        ({"policies": {"binding": "first"}}, "policies.binding", "keep_first"),
        ({"accounts": [{"name": "x", "platform": "msn"}]}, "accounts[0].platform", "unknown platform 'msn'"),
        ({"accounts": [{"name": "x", "platform": "webchat"}]}, "accounts[0].secret", "Field required"),
        ({"accounts": [{"name": "x", "platform": "webchat", "secret": "short"}]}, "accounts[0].secret", "at least 16"),
        ({"accounts": [{"name": "Bad Name", "platform": "workbench"}]}, "accounts[0].name", "pattern"),
        ({"accounts": [{"name": "w", "platform": "workbench"}, {"name": "w", "platform": "workbench"}]},
         "accounts[1].name", "duplicate"),
        ({"attribution": {"rates": {"store": "abc"}}}, "attribution.rates.store", "decimal"),
    ],
)
def test_errors_name_the_key(data, key, words):
    with pytest.raises(ConfigError) as e:
        build_config(data, env={})
    keys = [k for k, _ in e.value.problems]
    assert key in keys, e.value.problems
    assert words.lower() in dict(e.value.problems)[key].lower()


def test_example_config_is_valid():
    cfg = load_config(ROOT / "config.example.yaml", env={"WEBCHAT_SECRET": "x" * 24})
    defaults = build_config({}, env={})
    assert cfg.policies == defaults.policies and cfg.outbox == defaults.outbox and cfg.server == defaults.server


def run_cli(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_check_config_cli(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 70000\naccounts:\n  - name: w\n    platform: telegram\n")
    r = run_cli("check-config", str(bad))
    assert r.returncode == 2
    assert "server.port" in r.stderr and "accounts[0].platform: unknown platform 'telegram'" in r.stderr
    good = tmp_path / "good.yaml"
    good.write_text("server:\n  port: 9000\n")
    r = run_cli("check-config", str(good))
    assert r.returncode == 0 and "OK" in r.stdout
    assert run_cli("check-config", str(tmp_path / "missing.yaml")).returncode == 2
    (tmp_path / "broken.yaml").write_text("server: [\n")
    r = run_cli("check-config", str(tmp_path / "broken.yaml"))
    assert r.returncode == 2 and "not valid YAML" in r.stderr


def test_token_create_cli_stores_only_the_hash(tmp_path):
    import sqlite3

    db = tmp_path / "t.db"
    env = {"GATEWAY__DATABASE__URL": f"sqlite+aiosqlite:///{db}"}
    r = run_cli("token", "create", "--role", "admin", "--name", "ops", env=env)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("gw_")
    rows = sqlite3.connect(db).execute("SELECT role, name, token_hash FROM api_token").fetchall()
    assert len(rows) == 1 and rows[0][:2] == ("admin", "ops") and token not in rows[0][2]
    r = run_cli("token", "create", "--role", "store_manager", env=env)
    assert r.returncode == 2 and "--store" in r.stderr


def test_dingtalk_account_keys():
    base = {"name": "dingtalk", "platform": "dingtalk", "app_key": "k", "app_secret": "s", "robot_code": "r"}
    acc = build_config({"accounts": [base]}, env={}).account("dingtalk")
    assert (acc.mode, acc.api_base, acc.oapi_base) == ("http", "https://api.dingtalk.com", "https://oapi.dingtalk.com")
    with pytest.raises(ConfigError) as e:
        build_config({"accounts": [{**base, "event_token": "t"}]}, env={})
    assert "event_aes_key go together" in dict(e.value.problems)["accounts[0]"]
    with pytest.raises(ConfigError) as e:
        build_config({"accounts": [{**base, "mode": "websocket"}]}, env={})
    assert "accounts[0].mode" in dict(e.value.problems)


def test_example_dingtalk_block_is_valid_when_uncommented():
    import yaml

    text = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    block = text[text.index("  # - name: dingtalk"):text.index("  # --- WeCom")]
    lines = [ln[4:] if ln.startswith("  # ") else "" for ln in block.splitlines()]
    acc = yaml.safe_load("\n".join(lines))[0]
    env = {"DINGTALK_APP_SECRET": "s", "DINGTALK_EVENT_TOKEN": "t", "DINGTALK_EVENT_AES_KEY": "a" * 43}
    cfg = build_config({"accounts": [acc]}, env=env)
    assert cfg.account("dingtalk").event_aes_key == "a" * 43


def test_example_wecom_block_is_valid_when_uncommented():
    import yaml

    text = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    block = text[text.index("  # - name: wecom"):text.index("  # --- WeChat Official Account")]
    lines = [ln[4:] if ln.startswith("  # ") else "" for ln in block.splitlines()]
    acc = yaml.safe_load("\n".join(lines))[0]
    env = {"WECOM_SECRET": "s", "WECOM_CONTACT_SECRET": "c", "WECOM_TOKEN": "t", "WECOM_AES_KEY": "a" * 43}
    cfg = build_config({"accounts": [acc]}, env=env)
    assert cfg.account("wecom").push_cap == "month" and cfg.account("wecom").contact_secret == "c"
    with pytest.raises(ConfigError) as e:
        build_config({"accounts": [{**acc, "agent_id": "app-1", "encoding_aes_key": "short"}]}, env=env)
    assert {"accounts[0].agent_id", "accounts[0].encoding_aes_key"} <= set(dict(e.value.problems))


def test_example_wechat_mp_block_is_valid_when_uncommented():
    import yaml

    text = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    block = text[text.index("  # - name: wechat_mp"):text.index("policies:")]
    lines = [ln[4:] if ln.startswith("  # ") else "" for ln in block.splitlines()]
    acc = yaml.safe_load("\n".join(lines))[0]
    env = {"WECHAT_MP_APP_SECRET": "s", "WECHAT_MP_TOKEN": "tok", "WECHAT_MP_AES_KEY": "a" * 43}
    cfg = build_config({"accounts": [acc]}, env=env)
    assert cfg.account("wechat_mp").fallback_template.template_id == "TEMPLATE_ID_FROM_THE_MP_CONSOLE"
