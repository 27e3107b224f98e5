"""How to look at embedded jobs in the dashboard: the command that serves the gateway on
the same home (its SQLite database and artifact folder), the address, a key, and the
command of the worker that runs jobs submitted there (there is no broker).

The gateway resolves both from ``VR1_HOME`` as the embedded runner did, so the one
variable is enough; the key is issued for the embedded team and stored hashed like any.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from entrypoints.bootstrap import Embedded
from entrypoints.console import shown_path
from shared import teams

DEFAULT_PORT = 8000  # the gateway's own default (GatewaySettings.port)


@dataclass(frozen=True)
class Dashboard:
    command: str
    url: str
    api_key: str
    worker: str

    def lines(self) -> list[str]:
        """What the demo prints at its end."""
        return [
            "look at these jobs in the dashboard:",
            f"  {self.command}",
            f"  then open {self.url} with the API key {self.api_key}",
            f"to run jobs submitted there, also start: {self.worker}",
        ]


def _vr1() -> str:
    """The ``vr1`` beside this interpreter (a virtualenv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("vr1")
    return shown_path(beside) if beside.exists() else "vr1"


def dashboard(platform: Embedded, *, port: int = DEFAULT_PORT) -> Dashboard:
    """How to serve ``platform``'s jobs, with a fresh API key of its team."""
    team = platform.team()
    with platform.db.session() as session:
        issued = teams.create_key(session, team=team, name="dashboard")
    env = [f"VR1_HOME={shlex.quote(shown_path(platform.settings.home))}"]
    if port != DEFAULT_PORT:
        env.append(f"VR1_PORT={port}")
    command = " ".join([*env, shlex.quote(_vr1()), "serve", "gateway"])
    worker = " ".join([env[0], shlex.quote(_vr1()), "worker", "embedded"])
    return Dashboard(command, f"http://127.0.0.1:{port}/ui/", issued.secret, worker)
