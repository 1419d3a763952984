"""The product as users install it: a wheel built from the tracked files, installed into a fresh
virtualenv outside the repository, migrated and served from there.

An editable install (what `make` uses) reads every file from the checkout, so a page, script or
migration missing from the wheel went unnoticed until a user's `gateway serve` crashed at start.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urljoin

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "adapters", "bots")

def _tracked_files() -> list[str]:
    """The repository's files as a clean clone has them."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        return [p for p in out.decode().split("\0") if p and (REPO / p).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but caches and venvs
        skip = {".git", ".venv", "__pycache__", "build", "dist", ".pytest_cache", ".ruff_cache", ".hypothesis"}
        return [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(REPO).parts) and p.suffix not in (".pyc", ".db")]


def _run(*cmd, cwd: Path, env: dict, timeout: float = 300) -> str:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback only
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def _assets(url: str, body: str) -> set[str]:
    """Same-origin scripts and styles a page or module references (src/href and ES imports)."""
    refs = re.findall(r'(?:src|href)="([^"#?]+)"', body) + re.findall(r'\bfrom\s+"([^"]+)"', body)
    refs += re.findall(r'\bimport\s*\(\s*"([^"]+)"\s*\)', body) + re.findall(r'\bimport\s+"([^"]+)"', body)
    out = set()
    for ref in refs:
        full = urljoin(url, ref)
        if full.startswith(url.split("/", 3)[0] + "//" + url.split("/", 3)[2]) and full.endswith((".js", ".css")):
            out.add(full)
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the tracked files and install it into a fresh venv."""
    top = tmp_path_factory.mktemp("release")
    src = top / "src"
    for rel in _tracked_files():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", top / "dist", src, cwd=top, env=env)
    wheels = list((top / "dist").glob("advisor_gateway-*.whl"))
    assert len(wheels) == 1, wheels
    venv = top / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=top, env=env)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheels[0], cwd=top, env=env, timeout=900)
    return top


def test_the_wheel_holds_every_file_of_the_packages(installed):
    wheel = next((installed / "dist").glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p for p in _tracked_files() if p.split("/", 1)[0] in PACKAGES}
    assert expected, "no package files found"
    assert sorted(expected - names) == [], "tracked package files missing from the wheel"
    stray = sorted(n for n in names if not n.startswith("advisor_gateway-") and n not in expected)
    assert stray == [], "the wheel holds files that are not tracked package files"


def test_an_installed_release_migrates_and_serves_every_page_and_asset(installed):
    home = installed / "home"  # outside the repository: nothing can be imported from the checkout
    home.mkdir()
    assert REPO not in home.parents
    port = _free_port()
    (home / "config.yaml").write_text(
        f'database: {{url: "sqlite+aiosqlite:///{home}/gw.db"}}\nserver: {{host: 127.0.0.1, port: {port}}}\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "GATEWAY_CONFIG")}
    gateway = installed / "venv" / "bin" / "gateway"
    where = _run(installed / "venv" / "bin" / "python", "-c", "import gateway; print(gateway.__file__)", cwd=home, env=env)
    assert str(installed / "venv") in where, f"gateway imported from {where}"

    _run(gateway, "db", "upgrade", "--config", "config.yaml", cwd=home, env=env)
    from alembic.script import ScriptDirectory

    from gateway.db import MIGRATIONS, _alembic_config

    head = ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
    assert MIGRATIONS.is_relative_to(REPO)  # the head comes from the repository's own scripts
    with sqlite3.connect(home / "gw.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]

    log = open(home / "serve.log", "w+")  # noqa: SIM115 - read after the server stops
    proc = subprocess.Popen([str(gateway), "serve", "--config", "config.yaml"], cwd=home, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"gateway serve exited:\n{(home / 'serve.log').read_text()}"
            try:
                if _get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"/healthz never answered:\n{(home / 'serve.log').read_text()}"
            time.sleep(0.2)

        pages = [f"{base}/console/", f"{base}/workbench/", f"{base}/webchat/webchat/"]
        seen, todo = set(), list(pages) + [f"{base}/workbench/webim.js", f"{base}/webchat/webchat/webim.js"]
        while todo:
            url = todo.pop()
            if url in seen:
                continue
            seen.add(url)
            status, ctype, body = _get(url)
            assert status == 200 and body, f"{url} answered {status}"
            if url in pages:
                assert ctype.startswith("text/html"), (url, ctype)
            todo.extend(_assets(url, body.decode("utf-8")))
        console_assets = {u for u in seen if "/console/assets/" in u}
        assert {f"{base}/console/assets/console.js", f"{base}/console/assets/console.css",
                f"{base}/console/assets/api.js"} <= console_assets, sorted(seen)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert proc.returncode == 0, (home / "serve.log").read_text()
