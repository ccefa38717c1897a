"""The Dockerfile, the compose file and every Kustomize overlay, checked offline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import PurePosixPath

import pytest
import yaml

from churn_platform.settings import environment_variables
from tests.deploy.policies import BIN, CRONJOBS, check, find, pod_spec, reachable, render, validate
from tests.services import REPO

OVERLAYS = ("dev", "staging", "prod")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_without_warnings_and_validates(overlay, tmp_path):
    objs, stderr = render(REPO / "deploy" / "overlays" / overlay)
    assert "warning" not in stderr.lower(), stderr
    # The scheduled jobs are among what is validated.
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "CronJob"} >= set(CRONJOBS)
    plain = validate(objs, tmp_path)
    assert overlay == "dev" or len(plain) == len(objs) - 2  # PrometheusRule, ServiceMonitor


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_follows_the_policies(overlay):
    objs, _ = render(REPO / "deploy" / "overlays" / overlay)
    assert check(objs, overlay) == []


def test_the_runbooks_registry_upgrade_pod_is_admitted_and_reaches_the_registry_database(tmp_path):
    """docs/operations.md's one-off `mlflow db upgrade` pod: "a one-off pod" alone was refused by
    the namespace's restricted Pod Security, and default-deny left it no way to the database."""
    runbook = (REPO / "docs" / "operations.md").read_text()
    command = runbook[runbook.index("kubectl -n ml-production run mlflow-db-upgrade"):]
    labels = dict(pair.split("=") for pair in re.search(r"--labels=(\S+)", command).group(1).split(","))
    overrides = json.loads(re.search(r"--overrides='(.*?)'", command, re.S).group(1))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mlflow-db-upgrade", "labels": labels},
           "spec": {"restartPolicy": "Never", **overrides["spec"]}}  # fmt: skip
    validate([pod], tmp_path)
    context, (container,) = pod["spec"]["securityContext"], pod["spec"]["containers"]
    assert context["runAsNonRoot"] and context["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert container["args"] == ["sh", "-c", 'mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"']
    (secret,) = [e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]]
    for overlay, database in (("dev", "registry-db"), ("prod", None)):  # in the cluster, or managed outside it
        objs, _ = render(REPO / "deploy" / "overlays" / overlay)
        target = None if database is None else find(objs, "Deployment", database)["spec"]["template"]["metadata"]
        assert reachable(objs, labels, None if target is None else target["labels"], 5432), overlay
        # The Secret the registry reads its database from: the runbook's, or dev's generated name it explains.
        registry = pod_spec(find(objs, "Deployment", "mlflow"))["containers"][0]["env"]
        (used,) = [e["valueFrom"]["secretKeyRef"]["name"] for e in registry if e["name"] == "MLFLOW_BACKEND_STORE_URI"]
        assert used == secret or (overlay == "dev" and f"`{secret}-<hash>`" in runbook), (overlay, used)


@pytest.mark.parametrize("overlay", ["staging", "prod"])
def test_training_from_a_managed_feature_store_is_one_component_away(overlay, tmp_path):
    """`train --from-features` in the cluster: without a path to 5432 it fell back to an empty
    embedded store. The component gives churn-train that path; the rules then hold it to them."""
    copy = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", copy)
    kustomization = copy / "overlays" / overlay / "kustomization.yaml"
    text = kustomization.read_text()
    if "components:\n" in text:
        text = text.replace("components:\n", "components:\n  - ../../components/train-from-features\n", 1)
    else:
        text += "components:\n  - ../../components/train-from-features\n"
    kustomization.write_text(text)
    objs, _ = render(copy / "overlays" / overlay)
    assert check(objs, overlay) == []
    trainer = {"app.kubernetes.io/name": "churn-train"}
    assert reachable(objs, trainer, None, 5432)  # the managed feature database (and, by port, the others)
    assert not reachable(render(REPO / "deploy" / "overlays" / overlay)[0], trainer, None, 5432)  # without it
    train = next(o for o in objs if o["kind"] == "CronJob" and o["metadata"]["name"] == "churn-train")
    env = {e["name"]: e for e in pod_spec(train)["containers"][0]["env"]}
    assert env["CHURN_FEATURE_STORE_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_the_feature_store_component_lands_in_the_namespace_of_an_overlay_built_on_prod(tmp_path):
    """The cloud guides' overlays build on prod without a `namespace:` of their own: the
    component's policy went to the kubectl context's namespace, and churn-train had no egress."""
    copy = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", copy)
    (copy / "overlays" / "cloud").mkdir()
    (copy / "overlays" / "cloud" / "kustomization.yaml").write_text(
        "resources:\n  - ../prod\ncomponents:\n  - ../../components/train-from-features\n")
    objs, _ = render(copy / "overlays" / "cloud")
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] == "NetworkPolicy"} == {"ml-production"}


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
SCORE, TRAIN = "base/score-cronjob.yaml", "base/train-cronjob.yaml"
#: The training Job as it was shipped before #20 (a new file of the base in its break case).
TRAIN_JOB = """apiVersion: batch/v1
kind: Job
metadata:
  name: churn-train
  labels: {app.kubernetes.io/name: churn-train}
spec:
  ttlSecondsAfterFinished: 86400
  template:
    metadata:
      labels: {app.kubernetes.io/name: churn-train}
    spec:
      automountServiceAccountToken: false
      restartPolicy: Never
      securityContext: {runAsNonRoot: true}
      containers:
        - name: train
          image: churn-platform
          args: ["train", "--data", "$(CHURN_DATA_URI)/customers.parquet"]
          envFrom: [{configMapRef: {name: churn-config}}]
          resources: {requests: {cpu: 500m}, limits: {cpu: "1"}}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
"""
DEV_SUSPENDS = "\n    patch: |-\n      - {op: add, path: /spec/suspend, value: true}\n"
DEV_SUSPENDS_RETRAIN = "  - target: {kind: CronJob, name: churn-retrain}" + DEV_SUSPENDS
DEV_SUSPENDS_SCORE = "  - target: {kind: CronJob, name: churn-score}" + DEV_SUSPENDS
MLFLOW_CLIENTS = "[churn-api, churn-monitor, churn-performance, churn-retrain, churn-score, churn-train]"
PROD_REGISTRY_USERS = "name: churn-monitor|churn-performance|churn-retrain|churn-score|churn-train}"
DATASTORES, DEV_MINIO_CLIENTS = "components/dev-datastores/datastores.yaml", "churn-retrain, churn-score, churn-train"
DEV_LOG_DB_CLIENTS = "[churn-api, churn-monitor, churn-performance, churn-retrain]"
# name -> (overlay, [(file under deploy/, old text, new text)], problems the check must report)
BREAKS = {
    "prod-one-replica-latest-tag": ("prod", [
        (PROD, "{op: replace, path: /spec/minReplicas, value: 3}", "{op: replace, path: /spec/minReplicas, value: 1}"),
        (PROD, 'newTag: "0.1.0"', "newTag: latest"),
    ], ["prod: HPA must scale 3-10", "is not pinned by tag or digest"]),
    "api-replicas-beside-autoscaler": ("staging", [
        ("base/api.yaml", "spec:\n  # No replicas", "spec:\n  replicas: 2\n  # No replicas"),
    ], ["churn-api: spec.replicas is set, but its HorizontalPodAutoscaler owns the count"]),
    **{
        f"{overlay}-without-observability": (overlay, [
            (f"overlays/{overlay}/kustomization.yaml", "  - ../../components/observability\n", ""),
            (f"overlays/{overlay}/kustomization.yaml", "\n      - CHURN_PUSHGATEWAY_URL=http://", "\n#"),
        ], [f"{overlay}: the observability component is not rendered", f"{overlay}: CHURN_PUSHGATEWAY_URL is empty"])
        for overlay in ("staging", "prod")
    },
    **{
        f"{job}-dropped-by-{overlay}": (overlay, [
            (f"overlays/{overlay}/kustomization.yaml", "\npatches:\n", f"\npatches:{delete(f'churn-{job}')}"),
        ], [f"{overlay}: CronJob/churn-{job} is not rendered"])
        for job in ("performance", "retrain", "score")
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
        ("base/networkpolicy.yaml", MLFLOW_CLIENTS, MLFLOW_CLIENTS.replace(" churn-performance,", "")),
    ], ["CronJob/churn-performance: the NetworkPolicies do not let its pods reach MLflow (port 5000)"]),
    "performance-without-egress": ("prod", [
        ("base/networkpolicy.yaml", "[churn-monitor, churn-performance, churn-retrain]",
         "[churn-monitor, churn-retrain]"),
    ], [f"CronJob/churn-performance: the NetworkPolicies do not let its pods reach {what}" for what in (
        "MLflow (port 5000)", "the inference-log database (port 5432)", "the object store (port 443)")]),
    "dev-inference-db-refuses-performance": ("dev", [
        ("components/dev-datastores/datastores.yaml", "[churn-api, churn-monitor, churn-performance, churn-retrain]",
         "[churn-api, churn-monitor, churn-retrain]"),
    ], ["CronJob/churn-performance: the NetworkPolicies do not let its pods reach the inference-log database"]),
    "prod-performance-without-registry-credentials": ("prod", [
        (PROD, PROD_REGISTRY_USERS, PROD_REGISTRY_USERS.replace("|churn-performance", "")),
    ], ["CronJob/churn-performance: variables not taken from churn-secrets: ['MLFLOW_TRACKING_PASSWORD', "
        "'MLFLOW_TRACKING_USERNAME']"]),
    "retrain-left-out-of-base": ("prod", [
        ("base/kustomization.yaml", "  - retrain-cronjob.yaml\n", ""),
    ], ["prod: CronJob/churn-retrain is not rendered"]),
    "retrain-not-suspended-in-dev": ("dev", [
        (DEV, DEV_SUSPENDS_RETRAIN, DEV_SUSPENDS_RETRAIN.replace("value: true", "value: false")),
    ], ["dev: CronJob/churn-retrain must be suspended in dev (opt-in there), suspend is False"]),
    "retrain-suspend-patch-dropped-in-dev": ("dev", [
        (DEV, DEV_SUSPENDS_RETRAIN, ""),
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
        (RETRAIN, "values: [1, 2, 4]", "values: [2]"),
    ], ["CronJob/churn-retrain: the pod failure policy must fail the Job on exit [1, 2, 4], got [2]"]),
    "retrain-gives-up-when-unreachable": ("prod", [
        (RETRAIN, "values: [1, 2, 4]", "values: [1, 2, 3, 4]"),
    ], ["CronJob/churn-retrain: the pod failure policy must fail the Job on exit [1, 2, 4], got [1, 2, 3, 4]"]),
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
        ("base/networkpolicy.yaml", MLFLOW_CLIENTS, MLFLOW_CLIENTS.replace(" churn-retrain,", "")),
    ], ["CronJob/churn-retrain: the NetworkPolicies do not let its pods reach MLflow (port 5000)"]),
    "retrain-without-egress": ("prod", [
        ("base/networkpolicy.yaml", "[churn-monitor, churn-performance, churn-retrain]",
         "[churn-monitor, churn-performance]"),
    ], [f"CronJob/churn-retrain: the NetworkPolicies do not let its pods reach {what}" for what in (
        "MLflow (port 5000)", "the inference-log database (port 5432)", "the object store (port 443)")]),
    "dev-inference-db-refuses-retrain": ("dev", [
        ("components/dev-datastores/datastores.yaml", "[churn-api, churn-monitor, churn-performance, churn-retrain]",
         "[churn-api, churn-monitor, churn-performance]"),
    ], ["CronJob/churn-retrain: the NetworkPolicies do not let its pods reach the inference-log database"]),
    "dev-object-store-refuses-retrain": ("dev", [
        (DATASTORES, DEV_MINIO_CLIENTS, DEV_MINIO_CLIENTS.replace("churn-retrain, ", "")),
    ], ["CronJob/churn-retrain: the NetworkPolicies do not let its pods reach the object store (port 9000)"]),
    "prod-retrain-without-registry-credentials": ("prod", [
        (PROD, PROD_REGISTRY_USERS, PROD_REGISTRY_USERS.replace("|churn-retrain", "")),
    ], ["CronJob/churn-retrain: variables not taken from churn-secrets: ['MLFLOW_TRACKING_PASSWORD', "
        "'MLFLOW_TRACKING_USERNAME']"]),
    "retrain-without-the-log-database-url": ("staging", [
        (RETRAIN, "                - name: CHURN_INFERENCE_LOG_URL\n                  valueFrom:\n"
                  "                    secretKeyRef: {name: churn-secrets, key: CHURN_INFERENCE_LOG_URL}\n", ""),
    ], ["CronJob/churn-retrain: variables not taken from churn-secrets: ['CHURN_INFERENCE_LOG_URL']"]),
    "monitor-retries-drift": ("staging", [
        ("base/monitor-cronjob.yaml", "values: [1, 2, 4]", "values: [2, 4]"),
    ], ["CronJob/churn-monitor: the pod failure policy must fail the Job on exit [1, 2, 4], got [2, 4]"]),
    "score-left-out-of-base": ("prod", [
        ("base/kustomization.yaml", "  - score-cronjob.yaml\n", ""),
    ], ["prod: CronJob/churn-score is not rendered"]),
    "score-not-suspended-in-dev": ("dev", [
        (DEV, DEV_SUSPENDS_SCORE, DEV_SUSPENDS_SCORE.replace("value: true", "value: false")),
    ], ["dev: CronJob/churn-score must be suspended in dev (opt-in there), suspend is False"]),
    "score-suspend-patch-dropped-in-dev": ("dev", [
        (DEV, DEV_SUSPENDS_SCORE, ""),
    ], ["dev: CronJob/churn-score must be suspended in dev"]),
    **{
        f"score-suspended-in-{overlay}": (overlay, [
            (SCORE, "  suspend: false\n", "  suspend: true\n"),
        ], [f"{overlay}: CronJob/churn-score is suspended: it would never run in {overlay}"])
        for overlay in ("staging", "prod")
    },
    "score-resumes-with-a-stale-run": ("prod", [
        (SCORE, "  startingDeadlineSeconds: 3600\n", ""),
    ], ["CronJob/churn-score: needs startingDeadlineSeconds"]),
    "score-every-day": ("staging", [
        (SCORE, 'schedule: "0 5 * * 1"', 'schedule: "0 5 * * *"'),
    ], ["CronJob/churn-score: schedule '0 5 * * *' (Etc/UTC), not '0 5 * * 1' (Etc/UTC)"]),
    "score-on-local-time": ("prod", [
        (SCORE, "  timeZone: Etc/UTC\n", ""),
    ], ["CronJob/churn-score: schedule '0 5 * * 1' (None), not '0 5 * * 1' (Etc/UTC)"]),
    "score-with-a-progress-bar-in-its-log": ("staging", [
        (SCORE, ', "--no-progress"]', "]"),
    ], ["CronJob/churn-score: args must be ['score', '--input', '$(CHURN_DATA_URI)/customers/', '--output', "
        "'$(CHURN_DATA_URI)/scores/latest.parquet', '--no-progress']"]),
    "score-writes-to-read-only-root": ("staging", [
        (SCORE, '"$(CHURN_DATA_URI)/scores/latest.parquet"', '"scores/latest.parquet"'),
    ], ["CronJob/churn-score: --output scores/latest.parquet: its folder /app/scores is not on a writable emptyDir"]),
    "score-retries-rejected-rows": ("prod", [
        (SCORE, "values: [1, 2]", "values: [2]"),
    ], ["CronJob/churn-score: the pod failure policy must fail the Job on exit [1, 2], got [2]"]),
    "score-gives-up-when-unreachable": ("staging", [
        (SCORE, "values: [1, 2]", "values: [1, 2, 3]"),
    ], ["CronJob/churn-score: the pod failure policy must fail the Job on exit [1, 2], got [1, 2, 3]"]),
    "score-overlaps-itself": ("dev", [
        (SCORE, "concurrencyPolicy: Forbid", "concurrencyPolicy: Allow"),
    ], ["CronJob/churn-score: concurrencyPolicy must be Forbid"]),
    "score-without-writable-tmp": ("prod", [
        (SCORE, "              volumeMounts:\n                - name: tmp\n                  mountPath: /tmp\n", ""),
    ], ["CronJob/churn-score: /tmp is not on a writable emptyDir"]),
    "score-cut-off-from-mlflow": ("staging", [
        ("base/networkpolicy.yaml", MLFLOW_CLIENTS, MLFLOW_CLIENTS.replace(" churn-score,", "")),
    ], ["CronJob/churn-score: the NetworkPolicies do not let its pods reach MLflow (port 5000)"]),
    "score-without-egress": ("prod", [
        ("base/networkpolicy.yaml", "values: [churn-score, churn-train]", "values: [churn-train]"),
    ], ["CronJob/churn-score: the NetworkPolicies do not let its pods reach MLflow (port 5000)",
        "CronJob/churn-score: the NetworkPolicies do not let its pods reach the object store (port 443)"]),
    "dev-object-store-refuses-score": ("dev", [
        (DATASTORES, DEV_MINIO_CLIENTS, DEV_MINIO_CLIENTS.replace("churn-score, ", "")),
    ], ["CronJob/churn-score: the NetworkPolicies do not let its pods reach the object store (port 9000)"]),
    "prod-score-without-registry-credentials": ("prod", [
        (PROD, PROD_REGISTRY_USERS, PROD_REGISTRY_USERS.replace("|churn-score", "")),
    ], ["CronJob/churn-score: variables not taken from churn-secrets: ['MLFLOW_TRACKING_PASSWORD', "
        "'MLFLOW_TRACKING_USERNAME']"]),
    "score-without-object-store-credentials": ("staging", [
        (SCORE, "                - name: AWS_SECRET_ACCESS_KEY\n                  valueFrom:\n"
                "                    secretKeyRef: {name: churn-secrets, key: AWS_SECRET_ACCESS_KEY}\n", ""),
    ], ["CronJob/churn-score: variables not taken from churn-secrets: ['AWS_SECRET_ACCESS_KEY']"]),
    # Least privilege: batch scoring never reads the inference log.
    **{
        f"score-given-the-log-database-url-in-{overlay}": (overlay, [
            (SCORE, "              env:\n", "              env:\n                - name: CHURN_INFERENCE_LOG_URL\n"
                    "                  valueFrom:\n"
                    "                    secretKeyRef: {name: churn-secrets, key: CHURN_INFERENCE_LOG_URL}\n"),
        ], ["CronJob/churn-score: gets CHURN_INFERENCE_LOG_URL (the database password) but never reads the log"])
        for overlay in ("dev", "prod")
    },
    "score-given-every-secret": ("staging", [
        (SCORE, "                - configMapRef:\n                    name: churn-config\n",
         "                - configMapRef:\n                    name: churn-config\n"
         "                - secretRef:\n                    name: churn-secrets\n"),
    ], ["CronJob/churn-score: gets CHURN_INFERENCE_LOG_URL (the database password) but never reads the log"]),
    **{
        f"score-let-through-to-the-log-database-in-{overlay}": (overlay, [
            ("base/networkpolicy.yaml", "[churn-monitor, churn-performance, churn-retrain]",
             "[churn-monitor, churn-performance, churn-retrain, churn-score]"),
        ] + ([(DATASTORES, DEV_LOG_DB_CLIENTS, DEV_LOG_DB_CLIENTS.replace("]", ", churn-score]"))]
             if overlay == "dev" else []),
            ["CronJob/churn-score: the NetworkPolicies let its pods reach the inference-log database (port 5432)"])
        for overlay in OVERLAYS
    },
    # The defects #20 found, each put back.
    "mlflow-gets-service-links": ("dev", [
        ("base/mlflow.yaml", "      enableServiceLinks: false\n", ""),
    ], ["Deployment/mlflow: needs enableServiceLinks: false"]),
    "dev-bucket-job-cut-off-from-minio": ("dev", [
        (DATASTORES, "      app.kubernetes.io/name: minio-create-bucket\n  policyTypes:",
         "      app.kubernetes.io/name: minio-create-bucket-gone\n  policyTypes:"),
    ], ["minio-create-bucket: the NetworkPolicies do not let its pods reach minio (port 9000)"]),
    "train-as-a-job": ("staging", [
        ("base/kustomization.yaml", "  - train-cronjob.yaml\n", "  - train-job.yaml\n"),
        ("base/train-job.yaml", None, TRAIN_JOB),
    ], ["staging: CronJob/churn-train is not rendered",
        "Job/churn-train: runs our image, so an apply with a new tag fails"]),
    "dev-bucket-job-kept-for-ever": ("dev", [
        (DATASTORES, "  ttlSecondsAfterFinished: 600\n", ""),
    ], ["Job/minio-create-bucket: has no TTL, so an apply that changes its template fails for ever"]),
    **{
        f"train-scheduled-in-{overlay}": (overlay, [
            (TRAIN, "  suspend: true\n", "  suspend: false\n"),
        ], [f"{overlay}: CronJob/churn-train must be suspended: it runs on demand"])
        for overlay in OVERLAYS
    },
    "train-retried-after-registering": ("prod", [
        (TRAIN, "      backoffLimit: 0\n", "      backoffLimit: 2\n"),
    ], ["CronJob/churn-train: needs backoffLimit 0"]),
    "train-let-through-to-the-log-database": ("prod", [
        ("base/networkpolicy.yaml", "[churn-monitor, churn-performance, churn-retrain]",
         "[churn-monitor, churn-performance, churn-retrain, churn-train]"),
    ], ["CronJob/churn-train: the NetworkPolicies let its pods reach the inference-log database (port 5432)"]),
    # Training from the feature store: dev's rule reaches the feature-db pod and nothing else.
    "dev-train-cut-off-from-the-feature-store": ("dev", [
        (DATASTORES, "values: [churn-api, churn-features, churn-train]", "values: [churn-api, churn-features]"),
    ], ["CronJob/churn-train: the NetworkPolicies do not let its pods reach the feature-store database (port 5432)"]),
    **{
        f"{overlay}-data-in-the-dev-bucket": (overlay, [
            (f"overlays/{overlay}/kustomization.yaml", f"\n      - CHURN_DATA_URI=s3://{bucket}/data", ""),
        ], [f"CronJob/churn-{job}: s3://mlflow/data/{path} is not in the overlay's bucket {bucket}"
            for job, path in (("train", "customers.parquet"), ("score", "customers/"))])
        for overlay, bucket in (("staging", "churn-staging-mlflow"), ("prod", "churn-prod-mlflow"))
    },
    # A webhook's path is its secret: committed in the ConfigMap, it was readable by every pod and repo reader.
    "alert-webhook-in-the-configmap": ("staging", [
        ("base/config.env", "CHURN_PUSHGATEWAY_URL=\n", "CHURN_PUSHGATEWAY_URL=\nCHURN_MONITOR_ALERT_WEBHOOK=\n"),
    ], ["ConfigMap churn-config: holds secrets ['CHURN_MONITOR_ALERT_WEBHOOK']: they belong in churn-secrets"]),
    "performance-without-its-webhook": ("staging", [
        (PERFORMANCE, "                - name: CHURN_MONITOR_ALERT_WEBHOOK  # optional: without it, no webhook\n"
                      "                  valueFrom:\n                    secretKeyRef: {name: churn-secrets, "
                      "key: CHURN_MONITOR_ALERT_WEBHOOK, optional: true}\n", ""),
    ], ["CronJob/churn-performance: variables not taken from churn-secrets: ['CHURN_MONITOR_ALERT_WEBHOOK']"]),
    "data-folder-undefined": ("dev", [
        ("base/config.env", "CHURN_DATA_URI=s3://mlflow/data\n", ""),
    ], ["CronJob/churn-train: '$(CHURN_DATA_URI)/customers.parquet' names an undefined variable"]),
    **{
        f"dev-{name}-on-an-emptydir": ("dev", [
            (DATASTORES, f"persistentVolumeClaim: {{claimName: {name}-data}}", "emptyDir: {}"),
        ], [f"Deployment/{name}: volume 'data' is not a PersistentVolumeClaim"])
        for name in ("registry-db", "inference-db", "minio")
    },
    "dev-claim-not-rendered": ("dev", [
        (DATASTORES, "  name: minio-data\n", "  name: minio-storage\n"),
    ], ["Deployment/minio: PersistentVolumeClaim 'minio-data' is not rendered"]),
}  # fmt: skip


@pytest.mark.parametrize(("overlay", "edits", "expected"), BREAKS.values(), ids=BREAKS.keys())
def test_breaking_a_rule_is_caught(overlay, edits, expected, tmp_path):
    copy = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", copy)
    for name, old, new in edits:
        if old is None:  # a new file
            (copy / name).write_text(new)
            continue
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
    for job in ("train", "monitor", "performance", "retrain", "score"):
        assert compose["services"][job]["profiles"] == ["jobs"], job
        assert compose["services"][job]["restart"] == "no", job
    # Like the CronJob, the default run retrains only when the performance runs said so.
    assert compose["services"]["retrain"]["command"] == list(CRONJOBS["churn-retrain"].args)
    # Batch scoring too, against the compose MinIO: the same input and output as the CronJob.
    # (compose does not expand $(VAR): the command names the ConfigMap's default folder, in the
    # bucket of .env's MLFLOW_BUCKET, whose default is the ConfigMap's)
    folder = dict(line.split("=", 1) for line in (REPO / "deploy/base/config.env").read_text().splitlines()
                  if line and not line.startswith("#"))["CHURN_DATA_URI"]  # fmt: skip
    weekly = [a.replace("$(CHURN_DATA_URI)", folder) for a in CRONJOBS["churn-score"].args]
    command = [a.replace("${MLFLOW_BUCKET:-mlflow}", "mlflow") for a in compose["services"]["score"]["command"]]
    assert command == weekly and "${MLFLOW_BUCKET:-mlflow}" in compose["services"]["score"]["command"][2]
    # The reports' default folder (reports/... under WORKDIR /app) is on the host.
    for job in ("monitor", "performance"):
        assert "./reports:/app/reports" in compose["services"][job]["volumes"], job
    assert compose["services"]["api"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    # Credentials come from .env, never from the file itself.
    text = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"(PASSWORD|SECRET|KEY)[A-Z_]*: (?!\$\{)", text)
    assert "--allowed-hosts" in (REPO / "deploy" / "entrypoint.sh").read_text()


def _secret_keys(objs: list[dict]) -> set[tuple[str, str]]:
    """(Secret, key) pairs the workloads need: each secretKeyRef, and each file of a mounted
    Secret that a variable points at (MLFLOW_AUTH_CONFIG_PATH)."""
    needed: set[tuple[str, str]] = set()
    for obj in objs:
        if obj["kind"] not in ("Deployment", "Job", "CronJob"):
            continue
        spec = pod_spec(obj)
        mounted = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        for c in spec["containers"]:
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    needed.add((ref["name"], ref["key"]))
            for m in c.get("volumeMounts", []):
                if m["name"] in mounted:
                    inside = m["mountPath"] + "/"
                    files = [e["value"] for e in c.get("env", []) if e.get("value", "").startswith(inside)]
                    assert files, f"{m['mountPath']}: no variable names a file of Secret {mounted[m['name']]}"
                    needed |= {(mounted[m["name"]], PurePosixPath(f).name) for f in files}
    return needed


@pytest.mark.parametrize("overlay", ["staging", "prod"])
def test_the_docs_list_every_secret_key_an_overlay_needs(overlay):
    """A Secret made outside git that lacks a key keeps the pods from starting: docs/deploy.md's
    table names each (Secret, key) with the overlays that need it."""
    objs, _ = render(REPO / "deploy" / "overlays" / overlay)
    rows = [line for line in (REPO / "docs" / "deploy.md").read_text().splitlines() if line.startswith("| `")]
    documented = {
        (cells[1].strip("` "), key.strip("` "))
        for cells in (row.split("|") for row in rows)
        if overlay in cells[3]
        for key in cells[2].split(",")
    }
    needed = _secret_keys(objs)
    assert ("mlflow-auth-config", "basic_auth.ini") in needed or overlay != "prod"
    assert needed - documented == set()


def test_the_request_rate_metric_has_an_adapter_rule_over_the_apis_counter():
    """prod scales on churn_api_requests_per_second: the shipped prometheus-adapter rule makes
    it, under that name, from the counter the API exports (the query itself is evaluated on a
    real Prometheus in tests/observability)."""
    from prometheus_client import generate_latest

    from serving.metrics import Metrics

    objs, _ = render(REPO / "deploy" / "overlays" / "prod")
    hpa = next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler")
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    rule = yaml.safe_load((REPO / "deploy/components/request-rate-hpa/prometheus-adapter-rules.yaml").read_text())
    (custom,) = rule["rules"]["custom"]
    assert custom["name"]["as"] == pods["metric"]["name"] == "churn_api_requests_per_second"
    counter = re.match(r"(\w+)\{", custom["seriesQuery"])[1]
    assert re.fullmatch(custom["name"]["matches"], counter)
    assert f"# TYPE {counter} counter" in generate_latest(Metrics().registry).decode()
    assert set(custom["resources"]["overrides"]) == {"namespace", "pod"}
    assert int(pods["target"]["averageValue"]) == 300  # docs/deploy.md: 60 % of one pod's capacity


def test_the_ingress_publishes_every_route_but_metrics_and_admin():
    """The Ingress lists the public paths one by one: a new route must be added there (or to
    the private ones here) on purpose, not found missing from outside."""
    from churn_platform.settings import Settings
    from serving.app import create_app

    ingress = yaml.safe_load((REPO / "deploy/base/ingress.yaml").read_text())
    paths = [(p["path"], p["pathType"]) for p in ingress["spec"]["rules"][0]["http"]["paths"]]

    def published(route: str) -> bool:
        return any(route == path or (kind == "Prefix" and route.startswith(f"{path}/")) for path, kind in paths)

    def flat(routes: list) -> list[str]:  # the app's own routes, and those of its routers (included unprefixed)
        return [p for r in routes for p in ([r.path] if hasattr(r, "path") else flat(r.original_router.routes))]

    routes = set(flat(create_app(Settings(tracking_uri="sqlite:///unused.db")).routes))
    private = {r for r in routes if r == "/metrics" or r.startswith("/admin/")}
    assert private == {"/metrics", "/admin/reload"}
    assert sorted(r for r in routes - private if not published(r)) == []
    assert not any(published(r) for r in private)
    # "4m" (4,194,304 bytes) answered a body of 4.1 MB with nginx's HTML 413, no JSON, no request id.
    size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    limit = dict(line.split("=", 1) for line in (REPO / "deploy/base/config.env").read_text().splitlines()
                 if line and not line.startswith("#"))["CHURN_MAX_BODY_BYTES"]  # fmt: skip
    assert int(size.removesuffix("m")) * 2**20 > int(limit) * 1.1, (size, limit)
