"""The project's own files agree with each other (one source of truth per fact)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from churn_platform.training_config import TrainConfig
from tests.services import REPO


def test_conda_env_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(project)


def test_mlproject_defaults_match_the_training_defaults():
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    assert set(spec["entry_points"]) == {"train", "monitor", "performance", "retrain", "score"}
    params = spec["entry_points"]["train"]["parameters"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, param in params.items():
        expected = defaults[name]
        if expected is None or name == "model_name":  # not given: empty, left out (the name: the settings')
            assert param["default"] == "", name
        else:
            assert type(expected)(param["default"]) == expected, name
        assert f"{{{name}}}" in spec["entry_points"]["train"]["command"]


def test_readme_configuration_table_matches_the_settings():
    from churn_platform.settings import environment_variables

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        name, default, description = (cell.strip() for cell in row.strip("|").split("|")[:3])
        documented[name.strip("`")] = (default, description.endswith("(secret)"))
    expected = {
        name: ("unset" if default in (None, "") else f"`{default}`", secret)
        for name, (default, _, secret) in environment_variables().items()
    }
    assert documented == expected


# The "shared" folder beside the checkout that once held the Telco data, however a file
# spells it: dot-dot-slash shared, shared-slash-data (either slash), or a path join of the
# strings "shared" and "data". Written with character classes so this file does not match itself.
SHARED_FOLDER = re.compile(r"\.\.[/\\]shared\b|\bshared[/\\]data\b|[\"']shared[\"']\s*[/,]\s*[\"']data[\"']")


def test_nothing_needs_shared_folder():
    """The repository is self-contained: no tracked file points at the shared folder beside the
    checkout (the real Telco data is data/telco_churn.csv; only data/README.md may say where the
    reference copy lives)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    tracked = [name for name in listed.stdout.decode().split("\0") if name]
    assert tracked, "git ls-files listed nothing"
    hits = []
    for name in tracked:
        path = REPO / name
        if name == "data/README.md" or not path.is_file():
            continue
        raw = path.read_bytes()
        if b"\0" in raw:
            continue  # binary
        for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
            if SHARED_FOLDER.search(line):
                hits.append(f"{name}:{number}: {line.strip()}")
    assert not hits, "files that still need the shared folder beside the repository:\n" + "\n".join(hits)


def test_one_knob_for_registry_retries(monkeypatch, caplog):
    """CHURN_REGISTRY_MAX_RETRIES decides, even where MLflow's own variable was left set."""
    import os

    from churn_platform import registry
    from churn_platform.settings import Settings

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    registry.configure(Settings(tracking_uri="sqlite:///unused.db", registry_max_retries=0, registry_timeout_s=4))
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "4"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=7 is replaced by 0" in caplog.text
    shipped = "\n".join(
        (REPO / name).read_text() for name in ("deploy/Dockerfile", "deploy/base/config.env", "docker-compose.yml")
    )
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in shipped  # no second knob in what we ship


def test_every_command_lists_the_same_exit_codes():
    from click.testing import CliRunner

    from churn_platform.cli import main
    from churn_platform.contract import EXIT_CODES_HELP, ExitCode

    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 70]
    top = CliRunner().invoke(main, ["--help"])
    assert "".join(EXIT_CODES_HELP.split()) in "".join(top.output.split())  # click rewraps the text
    assert {"serve", "monitor", "demo", "train", "promote"} <= set(top.output.split())  # plugins listed too
    monitor = CliRunner().invoke(main, ["monitor", "--help"])
    assert "4baddata" in "".join(monitor.output.split())
    readme = (REPO / "README.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} |" in readme, f"README's exit-code table lacks {code.name}"


# entry point -> [(-P parameters, what the command then gets)]
ENTRY_POINT_PARAMS = {
    "train": [({}, {"seed": 42, "c": 1.0, "decision_threshold": None, "data": "synthetic", "model_name": None}),
              ({"c": "10", "max_iter": "300.0", "seed": "0", "decision_threshold": "0.3", "data": "my data.csv"},
               {"c": 10.0, "max_iter": 300, "seed": 0, "decision_threshold": 0.3, "data": "my data.csv"}),
              ({"from_features": "true", "labels": "s3://b/labels 2026.csv"},
               {"from_features": True, "labels": "s3://b/labels 2026.csv", "data": "synthetic"}),
              ({"from_features": "false"}, {"from_features": False, "labels": ""})],
    "monitor": [({}, {"current": None, "rows": None, "model_name": None}),
                ({"current": "s3://b/current data.csv"}, {"current": "s3://b/current data.csv", "rows": None}),
                ({"rows": "5000.0"}, {"current": None, "rows": 5000})],
    "performance": [({}, {"since": None, "version": None, "model_name": None}), ({"version": "3"}, {"version": 3})],
    "retrain": [({}, {"trigger": "always", "model_name": None}),
                ({"trigger": "performance", "of": "3.0"}, {"trigger": "performance", "of": 3})],
    "score": [({"input": "in.csv", "output": "out.parquet"},
               {"source": "in.csv", "explain": False, "model_name": None}),
              ({"input": "in dir/", "output": "out.parquet", "explain_top_k": "3", "version": "2"},
               {"source": "in dir/", "explain": True, "top_k": 3, "version": 2}),
              ({"input": "in.csv", "output": "out.parquet", "with_features": "true", "chunk_rows": "5000.0"},
               {"with_features": True, "chunk_rows": 5000}),
              ({"input": "in.csv", "output": "out.parquet", "with_features": "false"}, {"with_features": False}),
              ({"input": "in.csv", "output": "out.parquet"}, {"max_reject_share": None}),
              ({"input": "in.csv", "output": "out.parquet", "max_reject_share": "0.05"}, {"max_reject_share": 0.05}),
              ({"input": "in.csv", "output": "out.parquet", "max_reject_share": "0"}, {"max_reject_share": None})],
}  # fmt: skip


@pytest.mark.parametrize(
    ("entry_point", "given", "expected"), [(e, *case) for e, cases in ENTRY_POINT_PARAMS.items() for case in cases]
)
def test_each_entry_point_command_parses_as_mlflow_run_builds_it(entry_point, given, expected):
    """The command `mlflow run -e ENTRY -P ...` runs, built by MLflow itself (it shell-quotes
    each value: a value in double quotes in MLproject arrived as the two characters ''), then
    the entry point's shell, then the real CLI's parser."""
    import importlib
    import shlex

    import click
    from mlflow.projects import _project_spec

    from churn_platform.cli import main

    command = _project_spec.load_project(str(REPO)).get_entry_point(entry_point).compute_command(given, None)
    python, dash_m, module, *argv = shlex.split(command)
    assert (python, dash_m, module) == ("python", "-m", f"pipelines.{entry_point}")
    args = importlib.import_module(module).command(argv)
    with click.Context(main) as parent:
        role = main.get_command(parent, args[0])
        with role.make_context(args[0], args[1:], parent=parent) as ctx:
            assert {k: ctx.params[k] for k in expected} == expected


@pytest.mark.parametrize(("given", "typed"), [
    ({"from_features": "true", "labels": "l.csv"}, []),
    ({"from_features": "true", "labels": "l.csv", "data": "c.csv"}, ["data"]),
    ({"from_features": "true", "labels": "l.csv", "n_rows": "300"}, ["n_rows"]),
    ({"data": "c.csv"}, ["data"]),
    ({"data": "c.csv", "n_rows": "300"}, ["data", "n_rows"]),
    ({"n_rows": "300"}, ["data", "n_rows"]),  # synthetic: both read
])  # fmt: skip
def test_under_mlflow_run_only_data_options_that_were_given_are_refused(given, typed):
    """MLproject passes every parameter, defaults too: `-P from_features=true` alone must not
    read as `--data synthetic --from-features`, nor `-P data=c.csv` as `--n-rows 5000` beside
    a file, which the command refuses. ``typed``: the options the command then reads as given."""
    import shlex

    import click
    from mlflow.projects import _project_spec

    from churn_platform.cli import main

    command = _project_spec.load_project(str(REPO)).get_entry_point("train").compute_command(given, None)
    args = importlib.import_module("pipelines.train").command(shlex.split(command)[3:])
    source = click.core.ParameterSource.COMMANDLINE
    with click.Context(main) as parent, main.get_command(parent, "train").make_context(
        "train", args[1:], parent=parent
    ) as ctx:
        assert [name for name in ("data", "n_rows") if ctx.get_parameter_source(name) is source] == typed


@pytest.mark.parametrize(("entry_point", "param"), [("retrain", "of"), ("retrain", "at_least")])
def test_a_zero_that_is_not_the_default_is_checked_not_dropped(entry_point, param):
    """`-P of=0` ran the default (3 runs) without a word: 0 meant "not given" for every
    parameter, where it should only for those whose default is 0."""
    import shlex

    import click
    from mlflow.projects import _project_spec

    from churn_platform.cli import main

    command = _project_spec.load_project(str(REPO)).get_entry_point(entry_point).compute_command({param: "0"}, None)
    _, _, module, *argv = shlex.split(command)
    args = importlib.import_module(module).command(argv)
    flag = "--" + param.replace("_", "-")
    with click.Context(main) as parent, pytest.raises(click.BadParameter, match="0 is not in the range") as refused:
        main.get_command(parent, args[0]).make_context(args[0], args[1:], parent=parent)
    assert refused.value.param.opts == [flag]


def test_a_from_features_value_that_is_not_true_or_false_is_a_usage_error(tmp_path):
    """`-P from_features=on` meant false: training ran on synthetic data, or failed naming --labels."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    done = subprocess.run([sys.executable, "-m", "pipelines.train", "--from-features", "on", "--labels", "l.csv"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "error: parameter from_features must be true or false, got 'on'"


@pytest.mark.parametrize(
    ("entry_point", "param", "value"),
    [("train", "seed", "nan"), ("train", "seed", "inf"), ("train", "max_iter", "150.7"), ("monitor", "rows", "1e400")],
)
def test_a_whole_number_parameter_that_is_not_one_is_a_usage_error(entry_point, param, value, tmp_path):
    """`mlflow run -P max_iter=150.7` must not train with 150 iterations, nor `seed=nan` crash."""
    import shlex

    from mlflow.projects import _project_spec

    command = _project_spec.load_project(str(REPO)).get_entry_point(entry_point).compute_command({param: value}, None)
    _, _, module, *argv = shlex.split(command)
    # Outside the checkout, in case a regression trains: nothing lands in the repo's own registry.
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    done = subprocess.run([sys.executable, "-m", module, *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: parameter {param} must be a whole number, got {value!r}"


@pytest.mark.parametrize(("entry_point", "param"), [
    ("train", "data"), ("train", "model_type"), ("retrain", "trigger"), ("score", "input"), ("score", "output"),
    ("score", "engine"),
])  # fmt: skip
def test_an_empty_parameter_that_has_a_value_by_default_or_none_is_a_usage_error(entry_point, param, capsys):
    """`-P data=$DATA` with DATA unset trained and registered a model of synthetic customers:
    empty meant "not given", and the default is `synthetic`."""
    import shlex

    from mlflow.projects import _project_spec

    given = {"input": "c.csv", "output": "s.parquet"} if entry_point == "score" else {}
    spec = _project_spec.load_project(str(REPO)).get_entry_point(entry_point)
    _, _, module, *argv = shlex.split(spec.compute_command({**given, param: ""}, None))
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(module).command(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: parameter {param} is empty (an unset shell variable?)"


def test_mlflow_clients_do_not_import_feast_through_its_plugin():
    """Feast's MLflow header plugin would import all of Feast (seconds) in every process that
    talks to a tracking server, and set PROMETHEUS_MULTIPROC_DIR for its children."""
    code = (
        "import os, sys\n"
        "from churn_platform import registry\n"
        "from churn_platform.settings import Settings\n"
        "registry.configure(Settings(tracking_uri='http://127.0.0.1:1'))\n"
        "from mlflow.tracking.request_header.registry import resolve_request_headers\n"
        "resolve_request_headers()\n"
        "print('feast' in sys.modules, os.environ.get('PROMETHEUS_MULTIPROC_DIR'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "None"], done.stdout + done.stderr


def test_the_api_docs_name_every_metric_the_api_exports():
    """Alerts, dashboards and runbooks use these: a metric missing from the list is one an
    operator cannot find (the list once named 8 of 16)."""
    from serving.metrics import Metrics

    lines = (REPO / "docs" / "api.md").read_text().splitlines()
    row = next(line for line in lines if line.startswith("| `GET /metrics`"))
    listed = set(re.findall(r"`(churn_\w+)", row))
    exported = {family.name + ("_total" if family.type == "counter" else "") for family in Metrics().registry.collect()}
    missing = sorted(exported - listed)
    assert not missing, f"docs/api.md's GET /metrics row lacks {missing}"


def test_the_apps_commands_are_found_from_a_checkout_that_is_not_installed(monkeypatch):
    """The MLproject's conda environment installs the dependencies, not the project: without
    its entry points `python -m pipelines.monitor` said "No such command 'monitor'"."""
    from click.testing import CliRunner

    from churn_platform import cli

    monkeypatch.setattr(cli, "entry_points", lambda group: [])
    cli._registered_commands.cache_clear()
    try:
        for command, option in (("monitor", "--current"), ("performance", "--last-days"), ("serve", "--workers")):
            result = CliRunner().invoke(cli.main, [command, "--help"])
            assert result.exit_code == 0 and option in result.output, (command, result.output)
    finally:
        cli._registered_commands.cache_clear()
