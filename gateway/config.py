"""Configuration: YAML file + `GATEWAY__A__B` environment overrides + `${ENV}` secrets.

Errors name the key (`accounts[1].secret`) and the reason, so `gateway check-config` is useful.
Account sections are validated by the config class of their platform's adapter.
"""

from __future__ import annotations

import os
import re
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.adapter import account_config_class, platforms
from gateway.netaddr import networks

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HHMM_RANGE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")


class ConfigError(Exception):
    """A configuration problem; each item is (key path, reason)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{k}: {r}" for k, r in problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    public_url: str | None = None
    max_body: int = Field(1024 * 1024, ge=1024)
    shutdown_grace: float = Field(10.0, ge=0)
    first_run_seed: bool = True
    log_format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal, JSON lines otherwise
    access_log: bool = True  # one line per HTTP request (method, path, status, ms, request id)
    fanout: Literal["auto", "local", "postgres"] = "auto"  # live messages across instances (auto: on PostgreSQL)
    # Processes serving one port (SO_REUSEPORT), each a full gateway sharing the database like separate
    # instances. None: one per CPU on PostgreSQL, 1 on SQLite (one writer, no cross-process live fan-out).
    workers: int | None = Field(None, ge=1, le=64)

    def worker_count(self, sqlite: bool) -> int:
        return self.workers or (1 if sqlite else max(1, os.cpu_count() or 1))
    # CIDRs of the reverse proxies / load balancers in front of the gateway. Only a request from one
    # of them has its X-Forwarded-For believed (the client address for media rate limits and
    # DingTalk's allowed_sources); anyone else could write any address there.
    trusted_proxies: list[str] = []

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        networks(v)
        return v

    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class DatabaseConfig(_Section):
    url: str = "sqlite+aiosqlite:///./gateway.db"
    auto_upgrade: bool | None = None  # None: upgrade automatically on SQLite only
    pool_size: int = Field(10, ge=1)
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _driver(cls, v: str) -> str:
        if not v.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return v

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


class OutboxConfig(_Section):
    concurrency: int = Field(32, ge=1, le=256)
    batch: int = Field(50, ge=1, le=1000)
    poll_interval: float = Field(0.5, gt=0)
    max_attempts: int = Field(8, ge=1)
    backoff_base: float = Field(2.0, gt=0)
    backoff_max: float = Field(900.0, gt=0)
    lease_seconds: float = Field(60.0, gt=0)
    linger_ms: float = Field(5.0, ge=0, le=1000)  # a lane waits this long before each claim, for rows arriving together


class IngressConfig(_Section):
    claim_retention_hours: int = Field(24, ge=1)
    replay_after_seconds: float = Field(30.0, gt=0)
    # Claim processors per process. One measured best on both backends: processing is CPU-bound, and
    # one processor's batches grow with the backlog (4 on PostgreSQL: 4× smaller batches, +40 % CPU per message).
    workers: int | None = Field(1, ge=1, le=64)  # null (earlier examples): 1
    batch: int = Field(200, ge=1, le=1000)  # most claims applied in one transaction (set-wise)
    linger_ms: float = Field(5.0, ge=0, le=1000)  # a processor waits this long for more claims to batch


class MaxPushes(_Section):
    per_week: int | None = Field(3, ge=0)


class Policies(_Section):
    quiet_hours: str | None = "22:00-08:00"
    max_pushes: MaxPushes = MaxPushes()
    binding: Literal["keep_first", "latest_wins", "ask_customer"] = "keep_first"
    handover: Literal["successor", "least_loaded", "manager"] = "successor"
    opt_out_keywords: list[str] = ["退订", "TD", "unsubscribe", "STOP"]
    opt_in_keywords: list[str] = ["订阅", "subscribe"]
    consent_version: str = "v1"
    switch_keywords: list[str] = ["换", "更换顾问", "switch"]  # a customer's yes to a new advisor (ask_customer)
    switch_hours: int = Field(24, ge=1)  # how long that question stays open
    handover_intro: bool = True  # the new advisor introduces themselves to each customer they take over
    remind_after_minutes: int | None = Field(10, ge=1)  # an unanswered customer reminds their clerk
    escalate_after_minutes: int | None = Field(30, ge=1)  # ... and then the store manager
    offhours_reply: bool = True  # outside the store's opening hours, say when the advisor is back
    phone_hash_key: str | None = None  # keys the phone hash; needed to record customers' phones
    # Bare text from a clerk is held and the clerk asked "发给谁？" when a relay switched their current
    # customer to another one less than this many seconds before (0: never ask).
    reply_guard_seconds: float = Field(8.0, ge=0, le=600)
    # A customer's messages relayed to their advisor per minute; the excess is kept, not relayed,
    # and the customer and the clerk are told once (null: no limit).
    customer_messages_per_minute: int | None = Field(30, ge=1)

    @field_validator("quiet_hours")
    @classmethod
    def _hours(cls, v: str | None) -> str | None:
        if v is not None and not _HHMM_RANGE.match(v):
            raise ValueError('must look like "22:00-08:00" or be null')
        return v


class Attribution(_Section):
    campaign_window_days: int = Field(7, ge=0)
    rates: dict[Literal["store", "cloud_store", "flagship", "other"], Decimal] = {
        "store": Decimal("0.03"),
        "cloud_store": Decimal("0.05"),
        "flagship": Decimal("0.02"),
        "other": Decimal("0"),
    }
    member_bounty: Decimal = Decimal("5.00")
    bounty_clawback_days: int = Field(30, ge=0)


class OrdersConfig(_Section):
    webhook_secret: str | None = None


class MediaConfig(_Section):
    """The media route (/media/<account>/<code>): links the gateway signs, and what one client may fetch."""

    # Signs media links (HMAC). Unset: each account's key is derived from its own platform secret,
    # which every instance shares already. Changing it (or that secret) ends the links handed out.
    secret: str | None = Field(None, min_length=16)
    link_ttl: int = Field(3 * 24 * 3600, ge=60)  # seconds a link works (the platforms keep files 3 days)
    rate_per_minute: int = Field(120, ge=1)  # media requests per client address and account


class CampaignsConfig(_Section):
    tick_seconds: float = Field(5.0, gt=0)  # how often schedules are checked and runs picked up
    misfire_grace_seconds: int = Field(3600, ge=0)  # a fire time missed by more (gateway down) is skipped
    batch: int = Field(2000, ge=10, le=50_000)  # customers materialised per transaction
    lease_seconds: float = Field(60.0, ge=10)  # a materialiser silent this long is presumed dead; another resumes


def _default_accounts() -> list[dict]:
    # The embedded default: built-in clerk workbench and customer webchat. The webchat secret is
    # random per process, so only the page's dev sign-in works until a config sets a real one.
    return [
        {"name": "workbench", "platform": "workbench"},
        {"name": "webchat", "platform": "webchat", "secret": secrets.token_hex(16), "dev_login": True},
    ]


class Config(_Section):
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    timezone: str = "Asia/Shanghai"
    accounts: list[Any] = Field(default_factory=_default_accounts)
    policies: Policies = Policies()
    attribution: Attribution = Attribution()
    orders: OrdersConfig = OrdersConfig()
    outbox: OutboxConfig = OutboxConfig()
    ingress: IngressConfig = IngressConfig()
    campaigns: CampaignsConfig = CampaignsConfig()
    media: MediaConfig = MediaConfig()

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    def account(self, name: str):
        for acc in self.accounts:
            if acc.name == name:
                return acc
        return None

    def accounts_of(self, platform: str) -> list:
        return [a for a in self.accounts if a.platform == platform]


def _substitute_env(node: Any, path: str, env: dict[str, str], problems: list) -> Any:
    if isinstance(node, dict):
        return {k: _substitute_env(v, f"{path}.{k}" if path else str(k), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    if isinstance(node, str):

        def repl(m: re.Match) -> str:
            if m.group(1) not in env:
                problems.append((path, f"environment variable {m.group(1)} is not set"))
                return ""
            return env[m.group(1)]

        return _ENV_REF.sub(repl, node)
    return node


def _apply_overrides(data: dict, env: dict[str, str], problems: list) -> None:
    """GATEWAY__SERVER__PORT=9000; lists take an index or an account name: GATEWAY__ACCOUNTS__WEBCHAT__SECRET."""
    for key in sorted(env):
        if not key.startswith("GATEWAY__"):
            continue
        parts = [p.lower() for p in key[len("GATEWAY__") :].split("__") if p]
        if not parts:
            continue
        node: Any = data
        where = ""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                idx = next((j for j, e in enumerate(node) if isinstance(e, dict) and e.get("name") == part), None)
                if idx is None and part.isdigit() and int(part) < len(node):
                    idx = int(part)
                if idx is None:
                    problems.append((key, f"no list entry {part!r} at {where or 'top level'}"))
                    break
                if last:
                    node[idx] = yaml.safe_load(env[key])
                else:
                    node = node[idx]
                where = f"{where}[{idx}]"
                continue
            if last:
                node[part] = yaml.safe_load(env[key]) if env[key] != "" else ""
            else:
                if part not in node or node[part] is None:
                    node[part] = _default_accounts() if part == "accounts" and not where else {}
                node = node[part]
            where = f"{where}.{part}" if where else part


def _loc(loc: tuple) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def build_config(data: dict | None, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ if env is None else env)
    problems: list[tuple[str, str]] = []
    raw = dict(data or {})
    _apply_overrides(raw, env, problems)
    raw = _substitute_env(raw, "", env, problems)
    if problems:
        raise ConfigError(problems)
    cfg = None
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        problems.extend((_loc(err["loc"]), err["msg"]) for err in e.errors())
    # Accounts are checked even when other sections failed, so one run reports every problem.
    accounts = raw.get("accounts", _default_accounts()) if cfg is None else cfg.accounts
    accounts = _validate_accounts(accounts if isinstance(accounts, list) else [], problems)
    if cfg is not None and (cfg.server.workers or 1) > 1 and cfg.database.is_sqlite:
        problems.append(("server.workers", "more than one worker needs PostgreSQL (SQLite has one writer, and live "
                                           "messages cannot cross processes without it)"))
    if problems or cfg is None:
        raise ConfigError(problems)
    cfg.accounts = accounts
    return cfg


def _validate_accounts(items: list[Any], problems: list) -> list:
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        key = f"accounts[{i}]"
        if not isinstance(item, dict):
            problems.append((key, "must be a mapping with name and platform"))
            continue
        platform = item.get("platform")
        cls = account_config_class(platform) if isinstance(platform, str) else None
        if cls is None:
            problems.append((f"{key}.platform", f"unknown platform {platform!r} (available: {', '.join(platforms())})"))
            continue
        try:
            acc = cls.model_validate(item)
        except ValidationError as e:
            problems.extend((f"{key}.{_loc(err['loc'])}" if err["loc"] else key, err["msg"]) for err in e.errors())
            continue
        if acc.name in seen:
            problems.append((f"{key}.name", f"duplicate account name {acc.name!r}"))
        seen.add(acc.name)
        out.append(acc)
    return out


def find_config_file(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("GATEWAY_CONFIG"):
        return Path(os.environ["GATEWAY_CONFIG"])
    return Path("config.yaml") if Path("config.yaml").exists() else None


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError([(str(p), "file not found")])
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError([(str(p), f"not valid YAML: {e}")]) from None
        if not isinstance(data, dict):
            raise ConfigError([(str(p), "top level must be a mapping")])
    return build_config(data, env)
