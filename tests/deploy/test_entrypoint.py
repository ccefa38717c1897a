"""What the image's entrypoint execs for every way the project starts it, checked offline.

The container's argv and environment are built from the files the way the runtime builds them:
the image ENTRYPOINT, then the compose service's `command` (which `docker compose run SERVICE
ARGS` replaces with ARGS) or the Kubernetes container's `args`; the image ENV, then the
env_file / ConfigMap, then the service's own environment. The real entrypoint script then runs
under /bin/sh with fake `churn-platform` and `mlflow` first on PATH, which print their argv.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.policies import CRONJOBS, container_env, expand, find, pod_spec, render
from tests.services import REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
# What compose interpolates from .env (see .env.example); values are placeholders.
DOTENV = {
    "POSTGRES_USER": "pg",
    "POSTGRES_PASSWORD": "pg-pass",
    "MINIO_ROOT_USER": "minio",
    "MINIO_ROOT_PASSWORD": "minio-pass",
    "CHURN_ADMIN_API_KEY": "admin-key",
}
FAKE = '#!/bin/sh\nprintf \'%s\\n\' "${0##*/}" "$@"\n'
API = ["churn-platform", "serve", "--host", "0.0.0.0", "--port", "8000"]


def _final_stage() -> list[str]:
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n\s*", " ", text[text.rindex("\nFROM ") :])  # join continuation lines
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _instruction(name: str) -> list[str]:
    line = [line for line in _final_stage() if line.startswith(f"{name} ")][-1]
    return json.loads(line[len(name) :])


IMAGE_ENTRYPOINT = _instruction("ENTRYPOINT")
IMAGE_CMD = _instruction("CMD")


def _script() -> Path:
    """The repository file the Dockerfile copies to the ENTRYPOINT path."""
    for line in _final_stage():
        words = line.split()
        if words[0] == "COPY" and words[-1] == IMAGE_ENTRYPOINT[0]:
            return REPO / words[-2]
    raise AssertionError(f"no COPY to {IMAGE_ENTRYPOINT[0]} in {DOCKERFILE}")


SCRIPT = _script()


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in _final_stage():
        if line.startswith("ENV "):
            env.update(word.split("=", 1) for word in shlex.split(line[4:]))
    env.pop("PATH")  # the test's own PATH puts the fakes first
    return env


def _env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def _interpolate(value: Any) -> str:
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        if DOTENV.get(name):
            return DOTENV[name]
        assert not (op or "").endswith("?"), f"compose would refuse: {arg}"
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", one, str(value)).replace("$$", "$")


def _run(argv: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the image's argv, with the real entrypoint under /bin/sh as in python:3.11-slim."""
    assert argv[: len(IMAGE_ENTRYPOINT)] == IMAGE_ENTRYPOINT, "the entrypoint was overridden"
    fakes = tmp_path / "bin"
    fakes.mkdir(exist_ok=True)
    for name in ("churn-platform", "mlflow"):
        (fakes / name).write_text(FAKE)
        (fakes / name).chmod(0o755)
    env = {**env, "PATH": f"{fakes}:/usr/bin:/bin"}
    return subprocess.run(
        ["/bin/sh", str(SCRIPT), *argv[len(IMAGE_ENTRYPOINT) :]], env=env, capture_output=True, text=True, timeout=30
    )


def _execs(argv: list[str], env: dict[str, str], tmp_path: Path) -> list[str]:
    done = _run(argv, env, tmp_path)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return done.stdout.splitlines()


# docker compose -------------------------------------------------------------------------------


def _service(name: str) -> dict[str, Any]:
    service = yaml.safe_load(COMPOSE.read_text())["services"][name]  # safe_load resolves the x-app anchors
    assert "entrypoint" not in service, "the tests assume the image ENTRYPOINT"
    return service


def _compose_env(name: str) -> dict[str, str]:
    service = _service(name)
    env = _image_env()
    for path in service.get("env_file", []):
        env.update(_env_file(REPO / path))
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({key: _interpolate(value) for key, value in environment.items()})
    return env


def _compose_argv(name: str, run_args: list[str] | None = None) -> list[str]:
    """`docker compose up` (run_args None) or `docker compose run --rm NAME *run_args`."""
    command = _service(name).get("command", IMAGE_CMD)
    if isinstance(command, str):
        command = shlex.split(command)
    command = [_interpolate(word) for word in command]  # compose interpolates `command` too
    if run_args:  # compose run replaces the command, never the entrypoint
        command = run_args
    return [*IMAGE_ENTRYPOINT, *command]


def compose(name: str, tmp_path: Path, run_args: list[str] | None = None) -> list[str]:
    return _execs(_compose_argv(name, run_args), _compose_env(name), tmp_path)


TRAIN = ["churn-platform", "train", "--data", "/data/telco_churn.csv"]
MLFLOW = [
    "mlflow", "server",
    "--backend-store-uri", "postgresql+psycopg2://pg:pg-pass@postgres:5432/mlflow",
    "--artifacts-destination", "s3://mlflow/artifacts",
    "--host", "0.0.0.0", "--port", "5000", "--workers", "2",  # MLflow's own default, 4, outgrows the pod
    "--allowed-hosts", "mlflow:*,localhost:*,127.0.0.1:*",
]  # fmt: skip


RUNS = [
    ("train", ["--data", "/data/telco_churn.csv"], TRAIN),
    ("train", ["--", "--data", "/data/telco_churn.csv"], TRAIN),
    ("train", ["train", "--data", "/data/telco_churn.csv"], TRAIN),
    ("train", ["train", "--", "--data", "/data/telco_churn.csv"], TRAIN),
    ("monitor", ["--rows", "5000"], ["churn-platform", "monitor", "--rows", "5000"]),
    ("monitor", ["--", "--rows", "5000"], ["churn-platform", "monitor", "--rows", "5000"]),
    ("performance", ["--since", "2025-01-01"], ["churn-platform", "performance", "--since", "2025-01-01"]),
    ("performance", ["--", "--json"], ["churn-platform", "performance", "--json"]),
    ("performance", ["performance", "--json"], ["churn-platform", "performance", "--json"]),
    ("retrain", ["--if", "always"], ["churn-platform", "retrain", "--if", "always"]),
    ("retrain", ["--", "--if", "drift", "--of", "5"], ["churn-platform", "retrain", "--if", "drift", "--of", "5"]),
    (
        "retrain",
        ["retrain", "--base", "/data/telco_churn.csv"],
        ["churn-platform", "retrain", "--base", "/data/telco_churn.csv"],
    ),
    (
        "score",
        ["--input", "/data/telco_churn.csv", "--output", "reports/scores.parquet"],
        ["churn-platform", "score", "--input", "/data/telco_churn.csv", "--output", "reports/scores.parquet"],
    ),
    ("score", ["--", "--version", "3", "--json"], ["churn-platform", "score", "--version", "3", "--json"]),
    ("score", ["score", "--help"], ["churn-platform", "score", "--help"]),
    ("api", ["--workers", "2"], [*API, "--workers", "2"]),
    ("mlflow", ["--workers", "1"], [*MLFLOW, "--workers", "1"]),  # the last --workers wins
]


@pytest.mark.parametrize(
    ("service", "run_args", "expected"), RUNS, ids=[f"run {svc} {' '.join(args)}" for svc, args, _ in RUNS]
)
def test_compose_run_passes_the_args_to_the_service_role(service, run_args, expected, tmp_path):
    assert compose(service, tmp_path, run_args) == expected


def test_compose_up_starts_each_service_in_its_role(tmp_path):
    assert compose("api", tmp_path) == API
    assert compose("train", tmp_path) == ["churn-platform", "train"]
    assert compose("monitor", tmp_path) == ["churn-platform", "monitor"]
    assert compose("performance", tmp_path) == ["churn-platform", "performance", "--last-days", "30"]
    assert compose("retrain", tmp_path) == ["churn-platform", "retrain", "--if", "performance"]
    # The CronJob's flags, with the data folder compose's MinIO has (the ConfigMap's default).
    folder = _env_file(REPO / "deploy" / "base" / "config.env")["CHURN_DATA_URI"]
    weekly = [a.replace("$(CHURN_DATA_URI)", folder) for a in CRONJOBS["churn-score"].args]
    assert compose("score", tmp_path) == ["churn-platform", *weekly]
    assert compose("mlflow", tmp_path) == MLFLOW


def test_compose_run_can_still_run_any_command(tmp_path):
    # The escape hatch for debugging: a first word that is neither a role nor a flag is a command.
    assert compose("train", tmp_path, ["mlflow", "--version"]) == ["mlflow", "--version"]
    # docs/operations.md: docker compose run --rm mlflow mlflow db upgrade ...
    assert compose("mlflow", tmp_path, ["mlflow", "db", "upgrade", "x"]) == ["mlflow", "db", "upgrade", "x"]


def test_a_word_that_is_neither_a_role_nor_a_command_is_refused(tmp_path):
    done = _run(_compose_argv("train", ["trian", "--data", "x.csv"]), _compose_env("train"), tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert "trian" in done.stderr
    assert "api | features | monitor | performance | retrain | score | train | mlflow-server" in done.stderr


def test_an_unknown_role_in_the_environment_is_refused(tmp_path):
    done = _run([*IMAGE_ENTRYPOINT, "--rows", "5"], {**_image_env(), "CHURN_ROLE": "monitr"}, tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert "monitr" in done.stderr


# plain docker run, without compose ----------------------------------------------------------


def test_docker_run_picks_the_role_from_the_first_argument_else_serves(tmp_path):
    env = _image_env()
    assert _execs([*IMAGE_ENTRYPOINT, *IMAGE_CMD], env, tmp_path) == API
    assert _execs([*IMAGE_ENTRYPOINT, "train", "--data", "d.csv"], env, tmp_path) == [
        "churn-platform", "train", "--data", "d.csv",
    ]  # fmt: skip
    assert _execs([*IMAGE_ENTRYPOINT, "performance", "--json"], env, tmp_path) == [
        "churn-platform", "performance", "--json",
    ]  # fmt: skip
    assert _execs([*IMAGE_ENTRYPOINT, "retrain", "--if", "performance"], env, tmp_path) == [
        "churn-platform", "retrain", "--if", "performance",
    ]  # fmt: skip
    assert _execs([*IMAGE_ENTRYPOINT, "score", "--input", "in.csv", "--output", "out.parquet"], env, tmp_path) == [
        "churn-platform", "score", "--input", "in.csv", "--output", "out.parquet",
    ]  # fmt: skip
    assert _execs([*IMAGE_ENTRYPOINT, "--port", "9000"], env, tmp_path) == [*API, "--port", "9000"]


# Kubernetes ---------------------------------------------------------------------------------


def _k8s(objs: list[dict[str, Any]], kind: str, name: str, tmp_path: Path) -> list[str]:
    (container,) = pod_spec(find(objs, kind, name))["containers"]
    # `command` would replace the image ENTRYPOINT and `args` its CMD.
    assert "command" not in container
    variables = container_env(objs, container)
    # Kubelet expands $(VAR) in args with the container's variables (not the image's).
    argv = [*IMAGE_ENTRYPOINT, *(expand(a, variables) for a in container.get("args", IMAGE_CMD))]
    return _execs(argv, {**_image_env(), **variables}, tmp_path)


KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/staging", "overlays/prod"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kubernetes_workloads_start_in_their_roles(kustomization, tmp_path):
    objs, _ = render(REPO / "deploy" / kustomization)
    assert _k8s(objs, "Deployment", "churn-api", tmp_path) == API
    mlflow = _k8s(objs, "Deployment", "mlflow", tmp_path)
    assert mlflow[:4] == ["mlflow", "server", "--backend-store-uri", "secret:MLFLOW_BACKEND_STORE_URI"]
    allowed = _env_file(REPO / "deploy" / "base" / "config.env")["MLFLOW_ALLOWED_HOSTS"]
    extra = ["--app-name", "basic-auth"] if kustomization.endswith("prod") else []  # the prod patch appends them
    assert mlflow[-2 - len(extra) :] == ["--allowed-hosts", allowed, *extra]


@pytest.mark.parametrize("cronjob", CRONJOBS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kubernetes_cronjobs_start_in_their_roles(kustomization, cronjob, tmp_path):
    objs, _ = render(REPO / "deploy" / kustomization)
    role, *flags = CRONJOBS[cronjob].args
    (container,) = pod_spec(find(objs, "CronJob", cronjob))["containers"]
    folder = container_env(objs, container)["CHURN_DATA_URI"]
    assert folder.startswith("s3://") and not folder.endswith("/")
    expanded = [f.replace("$(CHURN_DATA_URI)", folder) for f in flags]
    assert _k8s(objs, "CronJob", cronjob, tmp_path) == ["churn-platform", role, *expanded]


@pytest.mark.parametrize("cronjob", CRONJOBS)
def test_the_cli_accepts_each_cronjobs_flags(cronjob):
    """The flags the CronJob passes parse with the real command (a renamed option or a choice
    the command no longer has would otherwise fail only in the cluster, at the scheduled time)."""
    import click

    from churn_platform.cli import main

    role, *flags = CRONJOBS[cronjob].args
    folder = _env_file(REPO / "deploy" / "base" / "config.env")["CHURN_DATA_URI"]
    flags = [f.replace("$(CHURN_DATA_URI)", folder) for f in flags]
    with click.Context(main) as parent:
        command = main.get_command(parent, role)
        assert command is not None, role
        if isinstance(command, click.Group):  # a role with subcommands (features): its first flag names one
            parent = click.Context(command, info_name=role, parent=parent)
            role, *flags = flags
            command = command.get_command(parent, role)
            assert command is not None, role
        with command.make_context(role, list(flags), parent=parent) as ctx:
            if role == "retrain":
                assert ctx.params["trigger"] == "performance"
            if role == "refresh":  # today's export, dated by its last write, rejects beside it in the store
                assert ctx.params["source"].startswith("s3://") and ctx.params["rejects"].startswith("s3://")
                assert ctx.params["as_of"] == "modified"
            if role == "score":  # S3 in and out (the output staged on /tmp), Production, no progress bar
                assert ctx.params["source"].startswith("s3://") and ctx.params["output"].startswith("s3://")
                assert (ctx.params["alias"], ctx.params["version"], ctx.params["no_progress"]) == (None, None, True)


def _documented_jobs() -> dict[str, list[str]]:
    """The one-off Jobs docs/deploy.md builds from a CronJob by replacing its args: CronJob -> args."""
    docs = (REPO / "docs" / "deploy.md").read_text()
    found = re.findall(
        r"--from=cronjob/([\w-]+) --dry-run=client -o json \\\n\s*\| jq '\.spec\.template\.spec\.containers\[0\]"
        r"\.args = (\[.*?\])'",
        docs,
        re.S,
    )
    return {cronjob: json.loads(args) for cronjob, args in found}


def test_the_documented_outcomes_ingest_job_runs_the_command(tmp_path):
    """docs/deploy.md builds the ingest Job from the performance CronJob and changes only its args."""
    from click.testing import CliRunner

    from churn_platform.cli import main

    args = _documented_jobs()["churn-performance"]
    objs, _ = render(REPO / "deploy" / "overlays" / "prod")
    (container,) = pod_spec(find(objs, "CronJob", "churn-performance"))["containers"]
    container["args"] = args
    assert _k8s(objs, "CronJob", "churn-performance", tmp_path) == args  # a command, not a role
    assert args[:3] == ["churn-platform", "outcomes", "ingest"] and args[3].startswith("s3://")
    # The root filesystem is read-only: the rejects go to the emptyDir.
    rejects = args[args.index("--rejects") + 1]
    assert any(rejects.startswith(m["mountPath"].rstrip("/") + "/") for m in container["volumeMounts"])
    usage = CliRunner().invoke(main, ["outcomes", "ingest", "--help"])
    assert usage.exit_code == 0 and "--rejects" in usage.output


def test_the_documented_forced_retrain_runs_the_role_with_always(tmp_path):
    """docs/deploy.md forces a retrain with a Job from the retrain CronJob: the role, other flags."""
    import click

    from churn_platform.cli import main

    args = _documented_jobs()["churn-retrain"]
    objs, _ = render(REPO / "deploy" / "overlays" / "prod")
    (container,) = pod_spec(find(objs, "CronJob", "churn-retrain"))["containers"]
    container["args"] = args
    assert _k8s(objs, "CronJob", "churn-retrain", tmp_path) == ["churn-platform", *args]
    with click.Context(main) as parent:
        command = main.get_command(parent, args[0])
        with command.make_context(args[0], args[1:], parent=parent) as ctx:
            assert ctx.params["trigger"] == "always"


def test_the_documented_challenger_scoring_runs_the_role_with_another_alias_and_output(tmp_path):
    """docs/deploy.md scores with Challenger from the score CronJob: the role, other flags, and an
    output of its own (the weekly file is left alone)."""
    import click

    from churn_platform.cli import main

    args = _documented_jobs()["churn-score"]
    objs, _ = render(REPO / "deploy" / "overlays" / "prod")
    (container,) = pod_spec(find(objs, "CronJob", "churn-score"))["containers"]
    container["args"] = args
    folder = container_env(objs, container)["CHURN_DATA_URI"]  # kubelet expands $(CHURN_DATA_URI)
    expanded = [a.replace("$(CHURN_DATA_URI)", folder) for a in args]
    assert _k8s(objs, "CronJob", "churn-score", tmp_path) == ["churn-platform", *expanded]
    weekly = CRONJOBS["churn-score"].args
    with click.Context(main) as parent:
        command = main.get_command(parent, args[0])
        with command.make_context(args[0], args[1:], parent=parent) as ctx:
            assert ctx.params["alias"] == "Challenger" and ctx.params["no_progress"]
            assert ctx.params["source"] == weekly[weekly.index("--input") + 1]
            assert ctx.params["output"].startswith(weekly[weekly.index("--input") + 1].split("/")[0])
            assert ctx.params["output"] != weekly[weekly.index("--output") + 1]
