"""Prefect's local server for one ``tamis run``, started before the flow's imports so that it boots beside them.

Without ``PREFECT_API_URL`` Prefect starts a temporary server (a uvicorn
subprocess) only when the flow begins, and waits seconds for it. Started here,
as Prefect would start it (same command, same settings), it comes up on the
other core while this process imports the flow and checks the params and the
repository; ``PREFECT_API_URL`` then points this process at it, so Prefect
starts no server of its own.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time

STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


class ServerError(RuntimeError):
    """The local server did not come up; the message says how it ended."""


class LocalServer:
    """A Prefect API server subprocess on a free local port; ``ready()`` before the flow; stopped at exit."""

    def __init__(self) -> None:
        import prefect
        from prefect.settings import get_current_settings

        with socket.socket() as sock:  # a free port, as the OS gives one
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env=env,
        )
        # stopped at exit, as Prefect stops its own: registered before Prefect's log and event workers register
        # their flushes, it runs after them (atexit runs last-in first-out), so nothing is lost on the way out
        atexit.register(self.stop)

    def ready(self) -> None:
        """Wait until the server answers, then point this process's Prefect at it."""
        import httpx
        from prefect.context import refresh_global_settings_context

        deadline = time.monotonic() + float(os.environ.get(STARTUP_TIMEOUT_ENV) or 90)
        while True:
            if self.process.poll() is not None:
                raise ServerError(f"Prefect's local server exited with code {self.process.returncode} before it answered.")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"Prefect's local server did not answer within {STARTUP_TIMEOUT_ENV} seconds.")
            time.sleep(0.1)
        os.environ["PREFECT_API_URL"] = self.url
        refresh_global_settings_context()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if os.environ.get("PREFECT_API_URL") == self.url:
            del os.environ["PREFECT_API_URL"]


def start() -> LocalServer | None:
    """A local server started now, or None where ``PREFECT_API_URL`` (or the Prefect profile) names one."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return None
    return LocalServer()
