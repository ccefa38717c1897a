"""docker-compose.yml and the dev overlay, each started as local processes and walked through
docs/deploy.md: MLflow up, train registers a version, promote, the API becomes ready and predicts
real customers, monitor gives a verdict, score writes its output.

Every container runs exactly as its runtime would start it (tests/deploy/as_processes.py): the
image entrypoint with the service's command, the documented `docker compose run` ARGS or the
container's command/args; the environment compose or the kubelet would give it; volumes as local
folders; the service names of every URL pointed at local processes: the machine's PostgreSQL,
moto_server for MinIO and the app containers themselves. A broken documented command or a missing
variable fails here, not at the first `docker compose up` or `kubectl apply` of a user.

Each stack starts once per module; each step runs once, the first time a test needs it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.deploy.as_processes import (
    DEPLOY_DOCS,
    DOTENV_EXAMPLE,
    Compose,
    ComposeStack,
    Manifests,
    OverlayStack,
    Refused,
    Stack,
    Walkthrough,
    compose_runs,
    customers,
    documented,
    expand,
)
from tests.deploy.policies import pod_spec, render
from tests.services import REPO, ServiceError

DEV = REPO / "deploy" / "overlays" / "dev"


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walkthrough]:
    """`docker compose up -d` as processes, with a .env copied from .env.example and its
    placeholders changed, as the README asks (the API refuses the placeholder admin key)."""
    root = tmp_path_factory.mktemp("compose")
    dotenv = root / ".env"
    changed = re.sub(r"change-me[\w-]*", lambda found: f"set-{abs(hash(found[0])):x}", DOTENV_EXAMPLE.read_text())
    dotenv.write_text(changed)
    with ComposeStack(root, Compose(dotenv=dotenv)) as stack:
        try:
            stack.up()
        except ServiceError as exc:  # a service this machine must have: a failure, never a skip
            pytest.fail(str(exc), pytrace=False)
        yield Walkthrough(stack)


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walkthrough]:
    """`kubectl apply -k deploy/overlays/dev` as processes."""
    objs, _ = render(DEV)
    with OverlayStack(tmp_path_factory.mktemp("overlay"), Manifests(objs)) as stack:
        try:
            stack.up()
        except ServiceError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield Walkthrough(stack)


# docker compose ----------------------------------------------------------------------------


def test_compose_reads_env_example_without_a_warning():
    project = Compose()
    assert project.warnings == []
    assert set(project.app_services()) >= {"mlflow", "api", "train", "monitor", "score"}


def test_compose_up_starts_mlflow_and_the_api(compose: Walkthrough):
    running = {launch.container.name: launch for launch in compose.stack.running.values()}
    assert set(running) == {"compose service 'mlflow'", "compose service 'api'"}
    assert compose.stack.in_role("api").container.name == "compose service 'api'"


def test_compose_train_as_documented_registers_a_version(compose: Walkthrough):
    versions = compose.trained()
    assert [v.version for v in versions] == ["1"]  # docs/deploy.md then promotes --version 1


def test_compose_api_serves_the_promoted_version_to_real_customers(compose: Walkthrough):
    served = compose.served()
    assert served["ready"]["version"] == 1
    predictions = served["predictions"]
    assert len(predictions) == compose.predictions
    assert all(0 <= p["churn_probability"] <= 1 and p["model_version"] == 1 for p in predictions)


def test_compose_monitor_as_documented_gives_a_verdict(compose: Walkthrough):
    monitors, _ = compose.monitor_and_score()
    (monitor,) = monitors
    assert monitor.launch.container.option("--rows") == "5000"
    # `monitor` writes reports/drift/<UTC time>/ under the working directory: the ./reports volume.
    summaries = list(monitor.path("reports").rglob("summary.json"))
    assert len(summaries) == 1, f"{monitor.step}: no summary.json under the reports volume:\n{monitor.tail()}"


def test_compose_score_as_documented_writes_its_output(compose: Walkthrough):
    _, scores = compose.monitor_and_score()
    inputs = sorted(s.launch.container.option("--input") or "" for s in scores)
    assert inputs == ["/data/telco_churn.csv", "s3://mlflow/data/customers/"]
    for score in scores:
        assert compose.output_of(score)
    (local,) = [s for s in scores if s.launch.container.option("--input") == "/data/telco_churn.csv"]
    frame = pd.read_parquet(local.path(local.launch.container.option("--output") or ""))
    assert len(frame) == len(customers()) and frame["churn_probability"].between(0, 1).all()


def _same_scores(features: dict[str, Any]) -> None:
    by_id, sent = features["by_id"], features["sent"]
    assert by_id["errors"] == [] and len(by_id["predictions"]) == len(sent["predictions"]) == 50
    for got, want in zip(by_id["predictions"], sent["predictions"], strict=True):
        assert got["customer_id"] == want["customer_id"]
        assert abs(got["churn_probability"] - want["churn_probability"]) <= 1e-9
    assert features["ready"]["feature_store"]["state"] == "ok"


def test_compose_features_as_documented_feed_predictions_by_id(compose: Walkthrough):
    features = compose.features()
    (job,) = features["jobs"]
    argv = job.launch.container.argv
    assert (argv[argv.index("refresh") + 1], job.launch.container.option("--as-of")) == ("/data/telco_churn.csv", "now")
    # Written every run, on the ./reports volume: this run's, and no row of the real customers was bad.
    assert pd.read_parquet(job.path(job.launch.container.option("--rejects") or "")).empty
    _same_scores(features)


# the dev overlay ---------------------------------------------------------------------------


def test_overlay_apply_starts_mlflow_and_the_api(overlay: Walkthrough):
    roles = sorted(launch.container.role or "" for launch in overlay.stack.running.values())
    assert roles == ["api", "mlflow-server"]


def test_overlay_train_job_registers_a_version(overlay: Walkthrough):
    versions = overlay.trained()
    assert [v.version for v in versions] == ["1"]


def test_overlay_api_serves_the_promoted_version_to_real_customers(overlay: Walkthrough):
    served = overlay.served()
    assert served["ready"]["version"] == 1
    predictions = served["predictions"]
    assert len(predictions) == overlay.predictions  # all([]) held for an empty answer
    assert all(0 <= p["churn_probability"] <= 1 and p["model_version"] == 1 for p in predictions)


def test_overlay_monitor_cronjob_gives_a_verdict(overlay: Walkthrough):
    monitors, _ = overlay.monitor_and_score()
    (monitor,) = monitors
    output = monitor.launch.container.option("--output-dir") or ""
    assert (monitor.path(output) / "summary.json").is_file(), monitor.tail()


def test_overlay_score_cronjob_writes_its_output(overlay: Walkthrough):
    _, scores = overlay.monitor_and_score()
    (score,) = scores
    assert overlay.output_of(score).startswith("s3://")


def test_overlay_features_cronjob_feeds_predictions_by_id(overlay: Walkthrough):
    features = overlay.features()
    (job,) = features["jobs"]
    rejects = job.launch.container.option("--rejects") or ""
    assert rejects.startswith("s3://")  # beside the export, written every run
    bucket, _, key = rejects.removeprefix("s3://").partition("/")
    stored = overlay.stack.store_of(job.launch.container).client().get_object(Bucket=bucket, Key=key)
    assert pd.read_parquet(io.BytesIO(stored["Body"].read())).empty
    _same_scores(features)


# a broken command or a missing variable fails ----------------------------------------------


def _broken_docs(tmp_path: Path) -> Path:
    """docs/deploy.md with the documented train command's first flag misspelt (--data: --adta)."""
    (train,) = [run for run in compose_runs() if run.service == "train"]
    flag = next(a for a in train.args if a.startswith("--"))
    typo = f"--{flag[3]}{flag[2]}{flag[4:]}"
    lines = DEPLOY_DOCS.read_text().splitlines(keepends=True)
    assert f" {flag} " in lines[train.source.line - 1]
    lines[train.source.line - 1] = lines[train.source.line - 1].replace(f" {flag} ", f" {typo} ", 1)
    broken = tmp_path / "deploy.md"
    broken.write_text("".join(lines))
    return broken


def test_a_broken_documented_train_command_fails_the_train_step(tmp_path: Path):
    """The compose train step runs the line docs/deploy.md documents: misspelt there, it fails
    (before it reaches any service, so no stack is started for it)."""
    broken = _broken_docs(tmp_path)
    with ComposeStack(tmp_path / "stack") as stack, pytest.raises(AssertionError) as failed:
        Walkthrough(stack).train(docs=broken)
    message = str(failed.value)
    assert message.startswith("train (deploy.md:")  # the step, the documented line
    assert "exit 2, expected 0" in message
    assert "No such option" in message  # the process's own output


def test_a_variable_missing_from_env_example_fails_compose(tmp_path: Path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(re.sub(r"(?m)^CHURN_ADMIN_API_KEY=.*\n", "", DOTENV_EXAMPLE.read_text()))
    with pytest.raises(
        Refused, match="required variable CHURN_ADMIN_API_KEY is missing a value: set CHURN_ADMIN_API_KEY"
    ):
        Compose(dotenv=dotenv)


def test_a_variable_missing_from_a_service_fails_its_start(tmp_path: Path):
    """Without MLFLOW_BACKEND_STORE_URI the MLflow service's entrypoint refuses to start."""
    text = (REPO / "docker-compose.yml").read_text()
    text, count = re.subn(r"(?m)^      MLFLOW_BACKEND_STORE_URI: .*\n", "", text)
    assert count == 1
    file = tmp_path / "docker-compose.yml"
    file.write_text(text)
    with Stack(tmp_path / "stack") as stack:
        with pytest.raises(AssertionError) as failed:
            stack.start(Compose(file=file).container("mlflow"), "docker compose up: service 'mlflow'", publish=False)
    assert "docker compose up: service 'mlflow': not up" in str(failed.value)
    assert "MLFLOW_BACKEND_STORE_URI: set MLFLOW_BACKEND_STORE_URI" in str(failed.value)


def test_a_secret_key_missing_refuses_the_pod():
    objs, _ = render(DEV)
    secret = next(o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"].startswith("churn-secrets"))
    del secret["data"]["CHURN_ADMIN_API_KEY"]
    manifests = Manifests(objs)
    api = manifests.workload("churn-api")
    with pytest.raises(Refused, match=r"couldn't find key CHURN_ADMIN_API_KEY in Secret ml-production/churn-secrets"):
        manifests.container(api, pod_spec(api)["containers"][0])


def test_a_configmap_key_missing_fails_the_train_job(tmp_path: Path):
    """Without CHURN_DATA_URI in the ConfigMap, kubelet leaves $(CHURN_DATA_URI) as written and
    the train job finds no data (before it reaches any service, so no stack is started for it)."""
    objs, _ = render(DEV)
    config = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("churn-config"))
    del config["data"]["CHURN_DATA_URI"]
    manifests = Manifests(objs)
    train = manifests.workload("churn-train")
    (container,) = manifests.containers_of(train)
    assert container.option("--data") == "$(CHURN_DATA_URI)/customers.parquet"
    with Stack(tmp_path) as stack, pytest.raises(AssertionError) as failed:
        stack.run(container, "train (kubectl create job --from=cronjob/churn-train)")
    assert "train (kubectl create job --from=cronjob/churn-train): exit 2, expected 0" in str(failed.value)
    assert "data file not found: $(CHURN_DATA_URI)/customers.parquet" in str(failed.value)


# the machinery ---------------------------------------------------------------------------------


def test_kubelet_expansion():
    env = {"A": "x", "B": "$(A)"}
    assert expand("$(A)/y", env) == "x/y"
    assert expand("$$(A)", env) == "$(A)"  # escaped
    assert expand("$(C)", env) == "$(C)"  # undefined: as written
    assert expand("$(A", env) == "$(A"  # unterminated
    assert expand("a$b$", env) == "a$b$"
    assert expand("$(B)", env) == "$(A)"  # one pass


def test_compose_interpolation():
    project = Compose()
    project.variables = {"SET": "v", "EMPTY": ""}
    assert (
        project.interpolate("${SET}-${SET:-d}-${EMPTY:-d}-${EMPTY-d}-${UNSET-d}-$$SET-$SET", "x") == "v-v-d--d-$SET-v"
    )
    assert project.interpolate("${SET:+alt}${EMPTY:+alt}${UNSET:-${SET}}", "x") == "altv"
    with pytest.raises(Refused, match="required variable EMPTY is missing a value: say so"):
        project.interpolate("${EMPTY:?say so}", "x")
    assert project.interpolate("${EMPTY?fine}", "x") == ""
    assert project.interpolate("${UNSET}", "where") == "" and project.warnings[-1].startswith("where: the UNSET")


def test_kubelet_service_links():
    """With enableServiceLinks (the default) each Service of the namespace puts NAME_SERVICE_HOST,
    NAME_PORT=tcp://IP:PORT, ... in every container; without, only the API server's Service."""
    objs, _ = render(DEV)
    manifests = Manifests(objs)
    linked = manifests.service_env(links=True)
    assert re.fullmatch(r"tcp://10\.96\.0\.\d+:5000", linked["MLFLOW_PORT"])
    assert linked["MLFLOW_SERVICE_PORT_HTTP"] == "5000" and linked["CHURN_API_PORT"].endswith(":80")
    assert set(manifests.service_env(links=False)) == {k for k in linked if k.startswith("KUBERNETES_")}


def test_every_documented_compose_run_takes_a_role():
    """Each `docker compose run` line of docs/deploy.md builds a container (its variables set) that
    the entrypoint runs in a role, not as a stray command."""
    runs = compose_runs()
    assert {"train", "monitor", "score"} <= {run.service for run in runs}
    project = Compose()
    for run in runs:
        container = project.container(run.service, run.args, run.env)
        assert container.role == run.service, f"{run.source}: role {container.role}"
    assert documented(DEPLOY_DOCS, "churn-platform", "promote"), "docs/deploy.md promotes from the host"


def test_every_app_container_of_the_overlay_resolves():
    """Every Deployment, Job and CronJob container of the project's image: its ConfigMap and Secret
    keys exist, each $(VAR) of its command and args is defined, the entrypoint takes a role."""
    objs, _ = render(DEV)
    containers = Manifests(objs).app_containers()
    workloads = {c.name.split(" ")[0].split("/")[1] for c in containers}
    assert workloads >= {"mlflow", "churn-api", "churn-train", "churn-monitor", "churn-score"}
    for container in containers:
        assert container.role is not None, container.name
        undefined = [a for a in container.argv if "$(" in a]
        assert not undefined, f"{container.name}: kubelet leaves {undefined} as written (no such variable)"
