"""Rules every rendered overlay must follow; each returns the violations it finds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from churn_platform.settings import environment_variables

BIN = Path(sys.executable).parent
NAMESPACE = "ml-production"
WORKLOADS = ("Deployment", "Job", "CronJob")


def render(overlay: Path) -> tuple[list[dict[str, Any]], str]:
    done = subprocess.run([str(BIN / "kubectl"), "kustomize", str(overlay)], capture_output=True, text=True)
    if done.returncode:
        raise AssertionError(f"kustomize failed for {overlay}: {done.stderr}")
    return [d for d in yaml.safe_load_all(done.stdout) if d], done.stderr


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def check(objs: list[dict[str, Any]], overlay: str) -> list[str]:
    problems: list[str] = []
    config_maps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    for obj in objs:
        kind, meta = obj["kind"], obj["metadata"]
        where = f"{kind}/{meta['name']}"
        if kind != "Namespace" and meta.get("namespace") != NAMESPACE:
            problems.append(f"{where}: namespace is {meta.get('namespace')!r}, not {NAMESPACE}")
        if meta.get("labels", {}).get("app.kubernetes.io/part-of") != "churn-platform":
            problems.append(f"{where}: missing label app.kubernetes.io/part-of")
        if kind == "Secret" and overlay != "dev":
            problems.append(f"{where}: secrets are referenced, never committed, outside dev")
        if kind not in WORKLOADS:
            continue
        spec = pod_spec(obj)
        if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
            problems.append(f"{where}: pod does not set runAsNonRoot")
        for c in spec["containers"]:
            cw = f"{where}/{c['name']}"
            image = c["image"]
            tag = image.rsplit("/", 1)[-1]
            if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
                problems.append(f"{cw}: image {image!r} is not pinned by tag or digest")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits"):
                problems.append(f"{cw}: needs resource requests and limits")
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cw}: needs readOnlyRootFilesystem and no privilege escalation")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{cw}: must drop all capabilities")
            for ref in c.get("envFrom", []):
                name = ref.get("configMapRef", {}).get("name")
                if name and name not in config_maps:
                    problems.append(f"{cw}: references ConfigMap {name!r} that is not rendered (hash?)")
                if name and name == "churn-config":
                    problems.append(f"{cw}: references churn-config without its hash suffix")
    api = find(objs, "Deployment", "churn-api")
    hpa = find(objs, "HorizontalPodAutoscaler", "churn-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    probes = {k: container.get(k, {}).get("httpGet", {}).get("path") for k in ("livenessProbe", "readinessProbe")}
    if probes != {"livenessProbe": "/health", "readinessProbe": "/ready"} or "startupProbe" not in container:
        problems.append(f"churn-api: probes must be liveness /health, readiness /ready, plus a startupProbe: {probes}")
    if api["spec"]["strategy"].get("rollingUpdate", {}).get("maxUnavailable") != 0:
        problems.append("churn-api: RollingUpdate must have maxUnavailable 0")
    if "podAntiAffinity" not in api["spec"]["template"]["spec"].get("affinity", {}):
        problems.append("churn-api: needs pod anti-affinity")
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    if "/tmp" not in mounts:
        problems.append("churn-api: needs an emptyDir on /tmp (read-only root filesystem)")
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Resource"
    }
    if targets != {"cpu": 70, "memory": 80}:
        problems.append(f"HPA targets must be CPU 70 % and memory 80 %, got {targets}")
    if overlay == "prod":
        if api["spec"]["replicas"] < 3:
            problems.append(f"prod: churn-api has {api['spec']['replicas']} replicas, needs at least 3")
        if (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) != (3, 10):
            problems.append("prod: HPA must scale 3-10")
    if overlay == "prod":
        mlflow = find(objs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
        if "basic-auth" not in mlflow["args"]:
            problems.append("prod: the MLflow server must run in basic-auth mode")
        if "MLFLOW_TRACKING_PASSWORD" not in {e["name"] for e in container.get("env", [])}:
            problems.append("prod: the API needs tracking credentials for the basic-auth registry")
    if overlay == "dev" and api["spec"]["replicas"] != 1:
        problems.append("dev: one API replica")
    # Every variable the settings read is set, by the ConfigMap or a Secret reference.
    data = config_maps[next(r["configMapRef"]["name"] for r in container["envFrom"] if "configMapRef" in r)]["data"]
    provided = set(data) | {e["name"] for e in container.get("env", [])}
    missing = sorted(set(environment_variables()) - provided)
    if missing:
        problems.append(f"churn-api: variables the code reads are not set: {missing}")
    return problems
