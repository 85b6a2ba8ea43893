"""``bioident serve`` as a real process for the tests that need one (serve, replicas): started on a free
loopback port with the given environment, waited for until /health answers, stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.operations_fixtures import SERVICE_VARIABLES


@dataclass
class Served:
    process: subprocess.Popen
    base: str
    out_path: Path
    err_path: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(data_dir: Path, logs: Path, wait_s: float = 90, **variables: str) -> Served:
    """``service.cli serve`` with BIOIDENT_DATA_DIR=``data_dir`` and ``variables`` (the service settings the
    tests set, SERVICE_VARIABLES, are not inherited); fails the test, stopping it, if it exits or does not
    answer /health within ``wait_s``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env.update(BIOIDENT_DATA_DIR=str(data_dir), **variables)
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{port}.out", logs / f"{port}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode}: {err_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).json().get("status") == "ok":
                return Served(process, base, out_path, err_path)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"serve did not answer /health in {wait_s:g} s: {err_path.read_text()[-3000:]}")
        time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
