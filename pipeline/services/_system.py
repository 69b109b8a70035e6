"""Running commands, apt, and what one `up` prints and changes: shared by every service module."""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import ServicesError

__all__ = [
    "LOCAL_HOSTS",
    "Session",
    "apt_candidate",
    "installed",
    "require_local",
    "run",
    "say",
]

# The package's name, not this module's: every record of the command carries one logger name,
# pipeline.services, whichever of its modules emits it.
log = logging.getLogger(__package__)

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(slots=True)
class Session:
    """One `up`: what it changed, and whether apt's package lists were refreshed yet."""

    changes: list[str] = field(default_factory=list)
    apt_updated: bool = False

    def changed(self, event: str, message: str, **context: object) -> None:
        print(f"  + {message}", flush=True)
        self.changes.append(message)
        log.info(event, extra=context)

    def apt_update(self) -> None:
        # Lists of a fresh machine are often empty or stale; one refresh serves every install.
        if not self.apt_updated:
            say("Refreshing apt package lists")
            run("apt-get update", ["apt-get", "-q", "update"])
            self.apt_updated = True

    def apt_install(self, step: str, packages: Sequence[str]) -> None:
        missing = [p for p in packages if not installed(p)]
        present = [p for p in packages if p not in missing]
        if present:
            say(f"Already installed: {' '.join(present)}")
        if not missing:
            return
        self.apt_update()
        say(f"Installing {' '.join(missing)} with apt-get")
        started = time.monotonic()
        run(step, ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing])
        seconds = round(time.monotonic() - started, 1)
        self.changed(
            "packages installed",
            f"installed {' '.join(missing)} ({seconds:.0f} s)",
            packages=missing,
            seconds=seconds,
        )


def say(message: str) -> None:
    print(f"  {message}", flush=True)


def run(
    step: str, argv: Sequence[str], *, stdin: str | None = None, cwd: Path | None = None
) -> str:
    log.debug("running command", extra={"step": step, "argv": list(argv)})
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    try:
        # Arguments are lists built here, never a shell string, so nothing is interpreted.
        done = subprocess.run(  # noqa: S603
            argv, input=stdin, cwd=cwd, env=env, capture_output=True, text=True, check=True
        )
    except FileNotFoundError:
        raise ServicesError(step, f"{argv[0]} is not installed") from None
    except subprocess.CalledProcessError as e:
        tail = "\n".join((e.stderr or e.stdout or "").strip().splitlines()[-15:])
        raise ServicesError(step, f"`{shlex.join(argv)}` exited {e.returncode}:\n{tail}") from None
    return done.stdout


def installed(package: str) -> bool:
    try:
        status = run("dpkg-query", ["dpkg-query", "-W", "-f", "${Status}", package])
    except ServicesError:
        return False
    return status.endswith(" installed")


def apt_candidate(session: Session, package: str) -> bool:
    session.apt_update()
    policy = run("apt-cache policy", ["apt-cache", "policy", package])
    match = re.search(r"Candidate: (\S+)", policy)
    return match is not None and match[1] != "(none)"


def require_local(host: str, step: str) -> None:
    if host not in LOCAL_HOSTS:
        raise ServicesError(
            step, f"{host} is not this machine; services manages local servers only"
        )
