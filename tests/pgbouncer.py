"""A real PgBouncer (Debian's ``/usr/sbin/pgbouncer``) in front of the test server, on a
loopback port, in transaction mode: test-only. When it is missing and the tests run as
root on Debian, it is installed with apt-get (as ``.ci/run`` does), so the README's test
command works on a fresh machine; otherwise the tests fail saying what to install."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from onlineschema.embedded.server import _free_port, _server_os_user


def pgbouncer_program() -> str:
    """The pgbouncer program, installed from Debian's package when missing (as root)."""
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "pgbouncer"],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        subprocess.run(["service", "pgbouncer", "stop"], capture_output=True, check=False)
        if os.access("/usr/sbin/pgbouncer", os.X_OK):
            return "/usr/sbin/pgbouncer"
    raise RuntimeError(
        "pgbouncer is needed for the pooler tests: apt-get install pgbouncer"
        " (Debian/Ubuntu), or put it on PATH"
    )


class PgBouncer:
    """``pgbouncer`` listening on 127.0.0.1 for the server of ``dsn``, every database,
    ``pool_mode`` (transaction by default); ``dsn_for(dsn)`` is ``dsn`` through it."""

    def __init__(self, dsn: str, *, pool_mode: str = "transaction", pool_size: int = 20) -> None:
        params = conninfo_to_dict(dsn)
        self.server_host = str(params.get("host", "127.0.0.1"))
        self.server_port = int(params.get("port", 5432))
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None

    def dsn_for(self, dsn: str) -> str:
        params = conninfo_to_dict(dsn)
        params.update(host="127.0.0.1", port=str(self.port))
        return make_conninfo("", **params)

    def start(self) -> PgBouncer:
        self.dir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.dir.chmod(0o777)
        self.port = _free_port()
        users = self.dir / "userlist.txt"
        users.write_text('"postgres" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            f"pidfile = {self.dir / 'pgbouncer.pid'}\n"
            "server_login_retry = 1\n"
        )
        argv = [pgbouncer_program(), "-q"]
        user = _server_os_user()  # pgbouncer refuses to run as root
        if user is not None:
            argv += ["-u", user.name]
        self.proc = subprocess.Popen([*argv, str(ini)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen on port {self.port}: {self.log()}")

    def log(self) -> str:
        path = self.dir / "pgbouncer.log" if self.dir else None
        return path.read_text(errors="replace")[-3000:] if path and path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
