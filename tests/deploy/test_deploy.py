"""The Dockerfile, the compose file and every Kustomize overlay, checked offline."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from churn_platform.settings import environment_variables
from tests.deploy.policies import BIN, CRONJOBS, check, render
from tests.services import REPO

OVERLAYS = ("dev", "staging", "prod")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_without_warnings_and_validates(overlay, tmp_path):
    objs, stderr = render(REPO / "deploy" / "overlays" / overlay)
    assert "warning" not in stderr.lower(), stderr
    # The scheduled jobs are among what is validated.
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "CronJob"} >= set(CRONJOBS)
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


def delete(name: str) -> str:
    """An overlay patch that drops a CronJob (its own patch, not the base)."""
    return f"""
  - patch: |-
      $patch: delete
      apiVersion: batch/v1
      kind: CronJob
      metadata:
        name: {name}
"""


DEV, PROD = "overlays/dev/kustomization.yaml", "overlays/prod/kustomization.yaml"
PERFORMANCE, RETRAIN = "base/performance-cronjob.yaml", "base/retrain-cronjob.yaml"
DEV_SUSPENDS_RETRAIN = "{op: add, path: /spec/suspend, value: true}"
# name -> (overlay, [(file under deploy/, old text, new text)], problems the check must report)
BREAKS = {
    "prod-one-replica-latest-tag": ("prod", [
        (PROD, "{op: replace, path: /spec/replicas, value: 3}", "{op: replace, path: /spec/replicas, value: 1}"),
        (PROD, 'newTag: "0.1.0"', "newTag: latest"),
    ], ["prod: churn-api has 1 replicas, needs at least 3", "is not pinned by tag or digest"]),
    **{
        f"{job}-dropped-by-{overlay}": (overlay, [
            (f"overlays/{overlay}/kustomization.yaml", "\npatches:\n", f"\npatches:{delete(f'churn-{job}')}"),
        ], [f"{overlay}: CronJob/churn-{job} is not rendered"])
        for job in ("performance", "retrain")
        for overlay in OVERLAYS
    },
    "performance-left-out-of-base": ("staging", [
        ("base/kustomization.yaml", "  - performance-cronjob.yaml\n", ""),
    ], ["staging: CronJob/churn-performance is not rendered"]),
    "performance-retries-bad-data": ("staging", [
        (PERFORMANCE, "values: [1, 2, 4]", "values: [1, 2]"),
    ], ["CronJob/churn-performance: the pod failure policy must fail the Job on exit [1, 2, 4], got [1, 2]"]),
    "performance-overlaps-itself": ("dev", [
        (PERFORMANCE, "concurrencyPolicy: Forbid", "concurrencyPolicy: Allow"),
    ], ["CronJob/churn-performance: concurrencyPolicy must be Forbid"]),
    "performance-on-local-time": ("dev", [
        (PERFORMANCE, "  timeZone: Etc/UTC\n", ""),
    ], ["CronJob/churn-performance: schedule '30 6 * * *' (None), not '30 6 * * *' (Etc/UTC)"]),
    "performance-writes-to-read-only-root": ("staging", [
        (PERFORMANCE, '"--output-dir", "/tmp/report"', '"--output-dir", "/app/reports"'),
    ], ["CronJob/churn-performance: --output-dir /app/reports is not on a writable emptyDir"]),
    "performance-cut-off-from-mlflow": ("staging", [
        ("base/networkpolicy.yaml", "[churn-api, churn-monitor, churn-performance, churn-retrain, churn-train]",
         "[churn-api, churn-monitor, churn-retrain, churn-train]"),
    ], ["CronJob/churn-performance: the NetworkPolicies do not let its pods reach MLflow (port 5000)"]),
    "performance-without-egress": ("prod", [
        ("base/networkpolicy.yaml", "[churn-monitor, churn-performance, churn-retrain, churn-train]",
         "[churn-monitor, churn-retrain, churn-train]"),
    ], [f"CronJob/churn-performance: the NetworkPolicies do not let its pods reach {what}" for what in (
        "MLflow (port 5000)", "the inference-log database (port 5432)", "the object store (port 443)")]),
    "dev-inference-db-refuses-performance": ("dev", [
        ("components/dev-datastores/datastores.yaml", "[churn-api, churn-monitor, churn-performance, churn-retrain]",
         "[churn-api, churn-monitor, churn-retrain]"),
    ], ["CronJob/churn-performance: the NetworkPolicies do not let its pods reach the inference-log database"]),
    "prod-performance-without-registry-credentials": ("prod", [
        (PROD, "name: churn-monitor|churn-performance|churn-retrain}", "name: churn-monitor|churn-retrain}"),
    ], ["CronJob/churn-performance: variables not taken from churn-secrets: ['MLFLOW_TRACKING_PASSWORD', "
        "'MLFLOW_TRACKING_USERNAME']"]),
    "retrain-left-out-of-base": ("prod", [
        ("base/kustomization.yaml", "  - retrain-cronjob.yaml\n", ""),
    ], ["prod: CronJob/churn-retrain is not rendered"]),
    "retrain-not-suspended-in-dev": ("dev", [
        (DEV, DEV_SUSPENDS_RETRAIN, "{op: add, path: /spec/suspend, value: false}"),
    ], ["dev: CronJob/churn-retrain must be suspended in dev (opt-in there), suspend is False"]),
    "retrain-suspend-patch-dropped-in-dev": ("dev", [
        (DEV, f"  - target: {{kind: CronJob, name: churn-retrain}}\n    patch: |-\n      - {DEV_SUSPENDS_RETRAIN}\n",
         ""),
    ], ["dev: CronJob/churn-retrain must be suspended in dev"]),
    **{
        f"retrain-suspended-in-{overlay}": (overlay, [
            (RETRAIN, "  suspend: false\n", "  suspend: true\n"),
        ], [f"{overlay}: CronJob/churn-retrain is suspended: it would never run in {overlay}"])
        for overlay in ("staging", "prod")
    },
    "monitor-suspended-in-dev": ("dev", [
        ("base/monitor-cronjob.yaml", "  concurrencyPolicy: Forbid\n",
         "  suspend: true\n  concurrencyPolicy: Forbid\n"),
    ], ["dev: CronJob/churn-monitor is suspended: it would never run in dev"]),
    "retrain-resumes-with-a-stale-run": ("staging", [
        (RETRAIN, "  startingDeadlineSeconds: 3600\n", ""),
    ], ["CronJob/churn-retrain: needs startingDeadlineSeconds"]),
    "retrain-every-day": ("staging", [
        (RETRAIN, 'args: ["retrain", "--if", "performance"]', 'args: ["retrain"]'),
    ], ["CronJob/churn-retrain: args must be ['retrain', '--if', 'performance'] (the role, then its flags), "
        "got ['retrain']"]),
    "retrain-retries-not-needed": ("prod", [
        (RETRAIN, "values: [1, 2]", "values: [2]"),
    ], ["CronJob/churn-retrain: the pod failure policy must fail the Job on exit [1, 2], got [2]"]),
    "retrain-gives-up-when-unreachable": ("prod", [
        (RETRAIN, "values: [1, 2]", "values: [1, 2, 3]"),
    ], ["CronJob/churn-retrain: the pod failure policy must fail the Job on exit [1, 2], got [1, 2, 3]"]),
    "retrain-on-local-time": ("staging", [
        (RETRAIN, "  timeZone: Etc/UTC\n", ""),
    ], ["CronJob/churn-retrain: schedule '30 7 * * *' (None), not '30 7 * * *' (Etc/UTC)"]),
    "retrain-before-performance": ("staging", [
        (RETRAIN, 'schedule: "30 7 * * *"', 'schedule: "0 6 * * *"'),
    ], ["CronJob/churn-retrain: schedule '0 6 * * *' (Etc/UTC), not '30 7 * * *' (Etc/UTC)"]),
    "retrain-overlaps-itself": ("prod", [
        (RETRAIN, "concurrencyPolicy: Forbid", "concurrencyPolicy: Replace"),
    ], ["CronJob/churn-retrain: concurrencyPolicy must be Forbid"]),
    "retrain-without-writable-tmp": ("staging", [
        (RETRAIN, "              volumeMounts:\n                - name: tmp\n                  mountPath: /tmp\n", ""),
    ], ["CronJob/churn-retrain: /tmp is not on a writable emptyDir"]),
    "retrain-cut-off-from-mlflow": ("staging", [
        ("base/networkpolicy.yaml", "[churn-api, churn-monitor, churn-performance, churn-retrain, churn-train]",
         "[churn-api, churn-monitor, churn-performance, churn-train]"),
    ], ["CronJob/churn-retrain: the NetworkPolicies do not let its pods reach MLflow (port 5000)"]),
    "retrain-without-egress": ("prod", [
        ("base/networkpolicy.yaml", "[churn-monitor, churn-performance, churn-retrain, churn-train]",
         "[churn-monitor, churn-performance, churn-train]"),
    ], [f"CronJob/churn-retrain: the NetworkPolicies do not let its pods reach {what}" for what in (
        "MLflow (port 5000)", "the inference-log database (port 5432)", "the object store (port 443)")]),
    "dev-inference-db-refuses-retrain": ("dev", [
        ("components/dev-datastores/datastores.yaml", "[churn-api, churn-monitor, churn-performance, churn-retrain]",
         "[churn-api, churn-monitor, churn-performance]"),
    ], ["CronJob/churn-retrain: the NetworkPolicies do not let its pods reach the inference-log database"]),
    "dev-object-store-refuses-retrain": ("dev", [
        ("components/dev-datastores/datastores.yaml", "churn-retrain, churn-train, minio-create-bucket",
         "churn-train, minio-create-bucket"),
    ], ["CronJob/churn-retrain: the NetworkPolicies do not let its pods reach the object store (port 9000)"]),
    "prod-retrain-without-registry-credentials": ("prod", [
        (PROD, "name: churn-monitor|churn-performance|churn-retrain}", "name: churn-monitor|churn-performance}"),
    ], ["CronJob/churn-retrain: variables not taken from churn-secrets: ['MLFLOW_TRACKING_PASSWORD', "
        "'MLFLOW_TRACKING_USERNAME']"]),
    "retrain-without-the-log-database-url": ("staging", [
        (RETRAIN, "                - name: CHURN_INFERENCE_LOG_URL\n                  valueFrom:\n"
                  "                    secretKeyRef: {name: churn-secrets, key: CHURN_INFERENCE_LOG_URL}\n", ""),
    ], ["CronJob/churn-retrain: variables not taken from churn-secrets: ['CHURN_INFERENCE_LOG_URL']"]),
    "monitor-retries-drift": ("staging", [
        ("base/monitor-cronjob.yaml", "values: [1, 2, 4]", "values: [2, 4]"),
    ], ["CronJob/churn-monitor: the pod failure policy must fail the Job on exit [1, 2, 4], got [2, 4]"]),
}  # fmt: skip


@pytest.mark.parametrize(("overlay", "edits", "expected"), BREAKS.values(), ids=BREAKS.keys())
def test_breaking_a_rule_is_caught(overlay, edits, expected, tmp_path):
    copy = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", copy)
    for name, old, new in edits:
        text = (copy / name).read_text()
        assert old in text, f"{name} no longer has {old!r}: update this case"
        (copy / name).write_text(text.replace(old, new))
    objs, _ = render(copy / "overlays" / overlay)
    problems = check(objs, overlay)
    for problem in expected:
        assert any(problem in p for p in problems), (problem, problems)


def test_the_docs_run_each_cronjob_by_hand_and_resume_what_dev_suspends():
    docs = (REPO / "docs" / "deploy.md").read_text()
    for name, job in CRONJOBS.items():
        short = name.removeprefix("churn-")
        assert f"kubectl -n ml-production create job --from=cronjob/{name} {short}-now" in docs, name
        assert f"`{name}`" in docs, f"{name} is not in the Scheduled jobs table"
        resume = f"""kubectl -n ml-production patch cronjob {name} -p '{{"spec":{{"suspend":false}}}}'"""
        assert (resume in docs) == job.suspended_in_dev, name


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
    for job in ("train", "monitor", "performance", "retrain"):
        assert compose["services"][job]["profiles"] == ["jobs"], job
        assert compose["services"][job]["restart"] == "no", job
    # Like the CronJob, the default run retrains only when the performance runs said so.
    assert compose["services"]["retrain"]["command"] == list(CRONJOBS["churn-retrain"].args)
    # The reports' default folder (reports/... under WORKDIR /app) is on the host.
    for job in ("monitor", "performance"):
        assert "./reports:/app/reports" in compose["services"][job]["volumes"], job
    assert compose["services"]["api"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    # Credentials come from .env, never from the file itself.
    text = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"(PASSWORD|SECRET|KEY)[A-Z_]*: (?!\$\{)", text)
    assert "--allowed-hosts" in (REPO / "deploy" / "entrypoint.sh").read_text()
