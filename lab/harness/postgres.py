"""A private PostgreSQL cluster that an experiment may crash and start again.

The machine's PostgreSQL is shared by everyone working on it, so a soak that restarts "the database" must
bring its own: ``initdb`` into a temporary directory, ``pg_ctl`` on a free port, trust authentication on
127.0.0.1 only. PostgreSQL refuses to run as root, so as root every command runs as the ``postgres`` user.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.harness.database import with_database
from lab.harness.processes import free_port

_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)


class PrivatePostgres:
    """``initdb`` + ``pg_ctl`` on a free port; ``stop()``/``start()``/``kill()`` as often as needed.

    ``fsync`` is off: the cluster is thrown away, and a killed *process* loses nothing that way (the
    kernel keeps what was written). Raises ``RuntimeError`` when no PostgreSQL binaries are installed.
    """

    def __init__(self, *, database: str = "signup", port: int | None = None) -> None:
        bin_dir = next((d for d in _BIN_DIRS if (d / "pg_ctl").exists()), None)
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.url = with_database(self.admin_url, database)
        self._root = Path(tempfile.mkdtemp(prefix="signup-pg-"))
        self.data_dir = self._root / "data"
        self.log_file = self._root / "postgres.log"
        self._as_postgres = getpass.getuser() == "root"
        if self._as_postgres:
            shutil.chown(self._root, user="postgres", group="postgres")
        os.chmod(self._root, 0o755)  # noqa: S103 - the postgres user must reach its data directory

    @staticmethod
    def available() -> bool:
        return any((d / "pg_ctl").exists() for d in _BIN_DIRS)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        """Create the cluster on first use, then start it and wait until it accepts connections."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self._root} -c fsync=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "-w", "start")

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server: ``fast`` rolls back open transactions; ``immediate`` is a crash (recovery at
        the next start). Does nothing if it is not running."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def close(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self._root, ignore_errors=True)
