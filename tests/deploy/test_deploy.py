"""The Dockerfile, the compose file and every Kustomize overlay, checked offline."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from churn_platform.settings import environment_variables
from tests.deploy.policies import BIN, check, render
from tests.services import REPO

OVERLAYS = ("dev", "staging", "prod")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_without_warnings_and_validates(overlay, tmp_path):
    objs, stderr = render(REPO / "deploy" / "overlays" / overlay)
    assert "warning" not in stderr.lower(), stderr
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(yaml.safe_dump_all(objs))
    done = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", "1.30.0", "--quiet", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_follows_the_policies(overlay):
    objs, _ = render(REPO / "deploy" / "overlays" / overlay)
    assert check(objs, overlay) == []


def test_breaking_a_rule_is_caught(tmp_path):
    copy = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", copy)
    prod = copy / "overlays" / "prod" / "kustomization.yaml"
    prod.write_text(
        prod.read_text()
        .replace("{op: replace, path: /spec/replicas, value: 3}", "{op: replace, path: /spec/replicas, value: 1}")
        .replace('newTag: "0.1.0"', "newTag: latest")
    )
    objs, _ = render(copy / "overlays" / "prod")
    problems = check(objs, "prod")
    assert "prod: churn-api has 1 replicas, needs at least 3" in problems
    assert any("is not pinned by tag or digest" in p for p in problems)


def test_dockerfile_passes_hadolint_and_keeps_the_final_stage_lean():
    done = subprocess.run([str(BIN / "hadolint"), str(REPO / "deploy" / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    text = (REPO / "deploy" / "Dockerfile").read_text()
    final = text[text.rindex("FROM ") :]
    assert final.startswith("FROM python:3.11-slim AS runtime")
    assert "USER 1000" in final and "HEALTHCHECK" in final and "/health" in final
    assert not re.search(r"apt-get|gcc|build-essential|pip install", final)
    assert "--no-cache" in text
    assert (REPO / ".dockerignore").read_text().count(".venv") == 1


def test_compose_file_matches_the_spec_and_sets_every_variable():
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
         str(REPO / "docker-compose.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    env_file = {
        line.split("=", 1)[0]
        for line in (REPO / api["env_file"][0]).read_text().splitlines()
        if line and not line.startswith("#")
    }
    missing = set(environment_variables()) - env_file - set(api["environment"])
    assert missing == set()
    assert compose["services"]["train"]["profiles"] == ["jobs"] and compose["services"]["monitor"]["profiles"] == [
        "jobs"
    ]
    assert compose["services"]["api"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    # Credentials come from .env, never from the file itself.
    text = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"(PASSWORD|SECRET|KEY)[A-Z_]*: (?!\$\{)", text)
    assert "--allowed-hosts" in (REPO / "deploy" / "entrypoint.sh").read_text()
