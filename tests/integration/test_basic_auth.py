"""The MLflow server in basic-auth mode (as in the prod overlay): our clients use env credentials.

The commands run in this process, each with its own credentials in the environment (MLflow's
client reads them for each request), rather than as eleven processes of ~13 s of imports each;
their warnings are log lines, which pytest captures."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.services import postgres_database, start_mlflow

pytestmark = pytest.mark.integration
PASSWORD = "auth-test-Pw-7731"


@pytest.fixture
def cli(cli_in_process):
    """Run the CLI as ``user`` (None: no credentials) against ``uri``."""

    def run(uri: str, user: tuple[str, str] | None, *args: str):
        username, password = user or (None, None)
        env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_S3_ENDPOINT_URL": None,
               "MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}  # fmt: skip
        return cli_in_process(env, *args)

    return run


def test_clients_authenticate_with_tracking_credentials_from_env(tmp_path, model_name, cli):
    ini = tmp_path / "auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path}/auth.db\nadmin_username = admin\nadmin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"  # as docs/deploy.md sets it: 109 s -> 21 s here
    )
    with postgres_database() as backend:
        server, uri = start_mlflow(tmp_path, backend, str(tmp_path / "artifacts"), "http://unused",
                                   extra_args=("--app-name", "basic-auth"),
                                   extra_env={"MLFLOW_AUTH_CONFIG_PATH": str(ini),
                                              "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-test-key"})  # fmt: skip
        try:
            anonymous = cli(uri, None, "train", "--n-rows", "300", "--model-name", model_name)
            assert anonymous.returncode == 2, anonymous.stderr[-1500:]  # no retry mends it
            assert "MLFLOW_TRACKING_USERNAME" in anonymous.stderr and "Traceback" not in anonymous.stderr
            assert PASSWORD not in anonymous.stderr

            authed = ("admin", PASSWORD)
            trained = cli(uri, authed, "train", "--n-rows", "300", "--model-name", model_name)
            assert trained.returncode == 0, trained.stderr[-1500:]
            assert cli(uri, authed, "promote", "--version", "1", "--model-name", model_name).returncode == 0
            status = cli(uri, authed, "status", "--model-name", model_name, "--json")
            assert status.returncode == 0 and '"version": 1' in status.stdout
            assert PASSWORD not in trained.stderr + trained.stdout + status.stdout

            # An on-call user who may only read (the server's default_permission), after a promotion
            # in the UI (lower-case `production`), which status would adopt and record: it once
            # failed with "set MLFLOW_TRACKING_USERNAME", which they had set.
            admin = ("admin", PASSWORD)
            api = f"{uri}/api/2.0/mlflow"
            # Version 2 is version 1's model registered again: a second train would cost ~8 s more.
            v1 = httpx.get(f"{api}/model-versions/get", params={"name": model_name, "version": "1"},
                           auth=admin).json()["model_version"]  # fmt: skip
            copy = {"name": model_name, "source": v1["source"], "run_id": v1["run_id"],
                    "model_id": v1["source"].removeprefix("models:/")}  # MLflow 3 wants the logged model's id
            assert httpx.post(f"{api}/model-versions/create", json=copy, auth=admin).status_code == 200
            ui_promotion = {"name": model_name, "alias": "production", "version": "2"}
            for path, body in (("users/create", {"username": "oncall", "password": "oncall-Pw-5528-x"}),
                               ("registered-models/alias", ui_promotion)):  # fmt: skip
                assert httpx.post(f"{api}/{path}", json=body, auth=admin).status_code == 200
            oncall = ("oncall", "oncall-Pw-5528-x")
            status = cli(uri, oncall, "status", "--model-name", model_name, "--json")
            assert status.returncode == 0, status.stderr[-1500:]
            assert json.loads(status.stdout[status.stdout.index("{"):])["production"]["version"] == 2
            assert "may read the model but not edit it" in status.stderr
            promoted = cli(uri, oncall, "promote", "--version", "1", "--model-name", model_name, "--force")
            assert promoted.returncode == 2 and "Traceback" not in promoted.stderr, promoted.stderr[-1500:]
            assert "oncall lacks the permission it needs on the model" in promoted.stderr

            # An engineer with EDIT on the model may set aliases but not delete one (MANAGE): their
            # promote once said "Production: v2 -> v1" while the UI's `production` kept v2 served,
            # and their next `status` recorded the move back as a change made outside.
            grant = {"username": "eng", "resource_type": "registered_model", "resource_id": model_name,
                     "permission": "EDIT"}  # fmt: skip
            assert httpx.post(f"{api}/users/create", json={"username": "eng", "password": "eng-Pw-7731-xyz"},
                              auth=admin).status_code == 200  # fmt: skip
            granted = httpx.post(f"{uri}/api/3.0/mlflow/users/permissions/grant", json=grant, auth=admin)
            assert granted.status_code == 200, granted.text
            eng = ("eng", "eng-Pw-7731-xyz")
            promoted = cli(uri, eng, "promote", "--version", "1", "--model-name", model_name, "--force")
            assert promoted.returncode == 0, promoted.stderr[-1500:]
            assert "deleting an alias needs MLflow's MANAGE permission" in promoted.stderr
            aliases = httpx.get(f"{api}/registered-models/get", params={"name": model_name},
                                auth=admin).json()["registered_model"]["aliases"]  # fmt: skip
            assert {a["alias"]: a["version"] for a in aliases if "roduction" in a["alias"]} == {
                "Production": "1", "production": "1"}  # fmt: skip
            status = cli(uri, eng, "status", "--model-name", model_name, "--json")
            assert json.loads(status.stdout[status.stdout.index("{"):])["production"]["version"] == 1
            history = cli(uri, eng, "history", "--model-name", model_name, "--json")
            events = json.loads(history.stdout[history.stdout.index("{"):])["events"]  # newest first
            assert (events[0]["action"], events[0]["to"]) == ("promote", 1), events[:2]  # no outside change after it
            # A rollback takes Challenger off the version it leaves (a promoted Challenger keeps it):
            # EDIT may not delete it, and the rollback, already made, is still exit 0 and says so.
            held = {"name": model_name, "alias": "Challenger", "version": "1"}
            assert httpx.post(f"{api}/registered-models/alias", json=held, auth=admin).status_code == 200
            back = cli(uri, eng, "rollback", "--model-name", model_name)
            assert back.returncode == 0, back.stderr[-1500:]
            assert "v1 -> v2; Challenger left on v1 (PERMISSION_DENIED)" in back.stdout, back.stdout
        finally:
            server.stop()
