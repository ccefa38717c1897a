"""`make docker-run` with a fake `docker` first on PATH that prints what it was asked to run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.services import REPO

FAKE_DOCKER = '#!/bin/sh\necho "MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI"\necho "fake-docker $*"\n'


def make_docker_run(tmp_path: Path, *make_args: str, uri: str | None = None) -> subprocess.CompletedProcess[str]:
    fakes = tmp_path / "bin"
    fakes.mkdir()
    (fakes / "docker").write_text(FAKE_DOCKER)
    (fakes / "docker").chmod(0o755)
    # Not the caller's registry nor its make flags (the suite itself may run under make).
    drop = {"MLFLOW_TRACKING_URI", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}
    env = {key: value for key, value in os.environ.items() if key not in drop}
    env["PATH"] = f"{fakes}:{env.get('PATH', '/usr/bin:/bin')}"
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "docker-run", *make_args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("make_args", "uri"),
    [
        ((), None),  # the Makefile's embedded default, sqlite:///mlflow.db
        (("MLFLOW_TRACKING_URI=sqlite:////abs/mlflow.db",), None),
        ((), "file:./mlruns"),
    ],
    ids=["default", "sqlite-on-the-command-line", "file-store-in-the-environment"],
)
def test_docker_run_refuses_a_registry_the_container_cannot_see(make_args, uri, tmp_path):
    done = make_docker_run(tmp_path, *make_args, uri=uri)
    assert done.returncode == 2
    assert "fake-docker" not in done.stdout  # refused before starting anything
    assert "is not an http(s):// tracking server" in done.stderr
    assert "the container cannot see" in done.stderr and "make mlflow-ui" in done.stderr
    assert "make compose-up" in done.stderr


@pytest.mark.parametrize("how", ["environment", "command-line"])
def test_docker_run_passes_an_http_registry_through(how, tmp_path):
    uri = "http://127.0.0.1:5000"
    if how == "environment":
        done = make_docker_run(tmp_path, uri=uri)
    else:
        done = make_docker_run(tmp_path, f"MLFLOW_TRACKING_URI={uri}")
    assert done.returncode == 0, done.stderr
    assert f"MLFLOW_TRACKING_URI={uri}" in done.stdout.splitlines()  # docker -e NAME reads it from here
    (run,) = [line for line in done.stdout.splitlines() if line.startswith("fake-docker ")]
    assert run.startswith("fake-docker run -d --name churn-api --network host -e MLFLOW_TRACKING_URI ")
    assert run.endswith(" churn-platform:0.1.0 api")


def test_docker_run_accepts_https(tmp_path):
    done = make_docker_run(tmp_path, uri="https://mlflow.example.com")
    assert done.returncode == 0, done.stderr
    assert "MLFLOW_TRACKING_URI=https://mlflow.example.com" in done.stdout.splitlines()
