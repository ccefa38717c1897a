"""An MLflow server behind TLS with a private certificate: our registry check trusts what
MLflow's own calls trust (MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_INSECURE_TLS)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import requests

from tests.services import BIN, free_port, start_process

pytestmark = pytest.mark.integration


def test_a_registry_behind_a_private_certificate_is_reached_with_mlflows_tls_settings(
    tmp_path, model_name, cli_in_process
):  # fmt: skip
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    port = free_port()
    env = dict(os.environ) | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = start_process(f"mlflow_tls_{port}", [
        str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--uvicorn-opts", f"--ssl-keyfile {key} --ssl-certfile {cert}",
    ], tmp_path, env=env)  # fmt: skip
    uri = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.proc.poll() is None, server.log_tail()
            try:
                if requests.get(f"{uri}/health", verify=str(cert), timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                assert time.monotonic() < deadline, server.log_tail()
                time.sleep(0.5)
        cli = cli_in_process
        base = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_SERVER_CERT_PATH": None,
                "MLFLOW_TRACKING_INSECURE_TLS": None, "MLFLOW_S3_ENDPOINT_URL": None}  # fmt: skip

        untrusted = cli(base, "status", "--model-name", model_name)
        assert untrusted.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr, untrusted.stderr
        assert "set MLFLOW_TRACKING_SERVER_CERT_PATH" in untrusted.stderr

        trusted = base | {"MLFLOW_TRACKING_SERVER_CERT_PATH": str(cert)}
        trained = cli(trusted, "train", "--n-rows", "300", "--model-name", model_name)  # was exit 3 "unreachable"
        assert trained.returncode == 0, trained.stderr[-1500:]
        status = cli(trusted, "status", "--model-name", model_name, "--json")
        assert status.returncode == 0 and '"model"' in status.stdout, status.stderr[-1500:]
        insecure = cli(base | {"MLFLOW_TRACKING_INSECURE_TLS": "true"}, "status", "--model-name", model_name)
        assert insecure.returncode == 0, insecure.stderr[-1500:]
    finally:
        # MLflow's client here keeps its TLS connection open, and uvicorn waits for the TLS
        # close that it never sends: a short wait, then SIGKILL (the registry is a throwaway).
        server.stop(timeout=2)
