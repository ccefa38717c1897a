"""Rules every rendered overlay must follow; each returns the violations it finds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

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


def validate(objs: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """kubernetes-validate --strict against Kubernetes 1.30; returns what was validated: all but
    prometheus-operator's kinds (not in Kubernetes' schemas; tests/observability checks them)."""
    plain = [o for o in objs if not o["apiVersion"].startswith("monitoring.coreos.com/")]
    out = folder / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(plain))
    done = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", "1.30.0", "--quiet", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return plain


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = next((o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name), None)
    if found is None:
        raise AssertionError(f"{kind}/{name} is not rendered")
    return found


class Scheduled(NamedTuple):
    """What a scheduled job must be, in every overlay."""

    #: The container args: the entrypoint role, then its flags.
    args: tuple[str, ...]
    schedule: str
    #: A daily or weekly job names UTC, or it runs at the controller's local time.
    time_zone: str | None
    #: Exit codes that are the job's answer (drift, degraded, not needed, nothing to judge, bad
    #: data, rejected rows): the pod failure policy fails the Job on them; 3 (unreachable) is
    #: left to the backoff, so it is retried.
    answers: tuple[int, ...] = (1, 2, 4)
    #: Suspended in dev (opt-in there), running in staging and prod.
    suspended_in_dev: bool = False
    #: Reads the inference-log database. A job that does not gets neither its URL (the secret
    #: carries the database password) nor a network path to it.
    inference_log: bool = True
    #: Suspended in every overlay: it runs only when started (kubectl create job --from=cronjob/...).
    on_demand: bool = False
    #: Exit 3 (unreachable) is retried; a job whose retry would repeat a side effect is not.
    retried: bool = True
    #: Talks to the MLflow server (every job but the feature store's).
    mlflow: bool = True
    #: Writes the feature-store database: its URL from churn-secrets and a network path there.
    feature_store: bool = False
    #: Reads the feature-store database where this NetworkPolicy is rendered (an opt-in), as above.
    feature_store_policy: str | None = None
    #: POSTs a failing verdict to CHURN_MONITOR_ALERT_WEBHOOK, a secret (its path is the key).
    alerts: bool = False


#: The overlay's data folder (ConfigMap key CHURN_DATA_URI, in the overlay's own bucket): the
#: customers training reads and batch scoring reads and writes. Kubelet expands $(VAR) in args.
DATA = "$(CHURN_DATA_URI)"
#: Where the weekly batch scores go, in the folder the train job reads its data from.
SCORES = f"{DATA}/scores/latest.parquet"

#: Secrets only the alerting jobs read (``Scheduled.alerts``), checked on each: not the API's.
JOB_SECRETS = {"CHURN_MONITOR_ALERT_WEBHOOK"}

#: The scheduled jobs every overlay ships.
CRONJOBS = {
    # A rolling day, hourly: all history would dilute a recent shift and grow without bound.
    "churn-monitor": Scheduled(
        ("monitor", "--last-hours", "24", "--output-dir", "/tmp/report"), "5 * * * *", "Etc/UTC", alerts=True
    ),
    # A rolling window: over all history a recent decay would be diluted, and the job would grow without bound.
    "churn-performance": Scheduled(
        ("performance", "--last-days", "30", "--output-dir", "/tmp/report"), "30 6 * * *", "Etc/UTC", alerts=True
    ),
    # Without --if performance, retrain would train every day (its default is --if always).
    "churn-retrain": Scheduled(
        ("retrain", "--if", "performance"), "30 7 * * *", "Etc/UTC", answers=(1, 2, 4), suspended_in_dev=True
    ),
    # Weekly, Mondays before the day's performance and retrain runs; S3 in and out (the output is
    # staged on /tmp, then uploaded), no progress bar in a log. Exit 1 is "some rows rejected".
    "churn-score": Scheduled(
        ("score", "--input", f"{DATA}/customers/", "--output", SCORES, "--no-progress"),
        "0 5 * * 1",
        "Etc/UTC",
        answers=(1, 2),
        suspended_in_dev=True,
        inference_log=False,
    ),
    # Daily, before the day's other jobs: today's export loaded as a snapshot and materialized
    # (apply, ingest, materialize); the rejects beside the export. Exit 1 is "some rows rejected".
    "churn-features": Scheduled(
        ("features", "refresh", f"{DATA}/features/customers.parquet", "--as-of", "modified",
         "--rejects", f"{DATA}/features/customers.rejects.parquet"),
        "0 4 * * *",
        "Etc/UTC",
        answers=(1, 2),
        suspended_in_dev=True,
        inference_log=False,
        mlflow=False,
        feature_store=True,
    ),  # fmt: skip
    # Training on demand: a suspended CronJob never runs on `kubectl apply` (a Job would, again
    # after its TTL, and an image change would make the apply fail: a Job's template is immutable).
    # Not retried: a retry after the version was registered would register another.
    "churn-train": Scheduled(
        ("train", "--data", f"{DATA}/customers.parquet"),
        "0 0 1 1 *",
        "Etc/UTC",
        answers=(1, 2, 3),
        inference_log=False,
        on_demand=True,
        retried=False,
        feature_store_policy="churn-train-features",  # train --from-features: dev, or the component
    ),
}

#: Paths the platform needs in every overlay, beyond each scheduled job's: (from, to, port).
#: None is a managed service outside the cluster (reached on 443 or 5432).
NETWORK_PATHS = (
    ("churn-api", "mlflow", 5000),
    ("churn-api", "inference-db", 5432),
    ("churn-api", "feature-db", 5432),
    ("churn-api", "minio", 9000),
    ("mlflow", "registry-db", 5432),
    ("mlflow", "minio", 9000),
    ("minio-create-bucket", "minio", 9000),
)
#: In-cluster datastores (dev) whose data must outlive a pod: the volume that must be a claim.
DATASTORE_VOLUMES = {"registry-db": "data", "inference-db": "data", "feature-db": "data", "minio": "data"}

#: Flags whose value is a local file the job writes (its folder must be writable), or an s3:// key.
FILE_OUTPUTS = ("--output", "--rejects")


_VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubelet's $(VAR) expansion in command, args and env values: $$ is a literal $, and an
    undefined $(VAR) is left as it is."""
    return _VARIABLE.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def container_env(objs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """A container's variables as kubelet sets them: envFrom, then env in order (each value
    expanded with those before it). A secret's value is "secret:KEY"; a missing ConfigMap key
    fails, as the pod would not start."""
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            env.update(find(objs, "ConfigMap", ref["configMapRef"]["name"]).get("data", {}))
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "secretKeyRef" in source:
            env[var["name"]] = f"secret:{source['secretKeyRef']['key']}"
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = find(objs, "ConfigMap", ref["name"]).get("data", {})
            if ref["key"] not in data:
                raise AssertionError(f"{container['name']}: ConfigMap {ref['name']} has no key {ref['key']}")
            env[var["name"]] = data[ref["key"]]
        elif "value" in var:
            env[var["name"]] = expand(var["value"], env)
    return env


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        op, value = e["operator"], labels.get(e["key"])
        if (
            (op == "In" and value not in e["values"])
            or (op == "NotIn" and value in e["values"])
            or (op == "Exists" and value is None)
            or (op == "DoesNotExist" and value is not None)
        ):
            return False
    return True


def _allows(rules: list[dict[str, Any]], peers_key: str, labels: dict[str, str] | None, port: int) -> bool:
    """Whether one rule admits the peer (in-namespace pod labels, or None: outside the cluster) on port."""
    for rule in rules:
        if rule.get("ports") and not any(p.get("port") == port for p in rule["ports"]):
            continue
        peers = rule.get(peers_key)
        if not peers:
            return True
        for peer in peers:
            if labels is None and "ipBlock" in peer:
                return True
            if labels is not None and "podSelector" in peer and "namespaceSelector" not in peer:
                if selects(peer["podSelector"], labels):
                    return True
    return False


def reachable(objs: list[dict[str, Any]], src: dict[str, str], dst: dict[str, str] | None, port: int) -> bool:
    """Whether the NetworkPolicies let pods labelled src open port on dst (pod labels, None: off-cluster)."""
    policies = [o["spec"] for o in objs if o["kind"] == "NetworkPolicy"]

    def types(p: dict[str, Any]) -> list[str]:  # the API server's default when policyTypes is left out
        return p.get("policyTypes") or (["Ingress", "Egress"] if "egress" in p else ["Ingress"])

    egress = [p for p in policies if "Egress" in types(p) and selects(p["podSelector"], src)]
    if egress and not any(_allows(p.get("egress", []), "to", dst, port) for p in egress):
        return False
    if dst is None:
        return True
    ingress = [p for p in policies if "Ingress" in types(p) and selects(p["podSelector"], dst)]
    return not ingress or any(_allows(p.get("ingress", []), "from", src, port) for p in ingress)


def _pod_labels(objs: list[dict[str, Any]], name: str) -> dict[str, str] | None:
    """The pod labels of the in-cluster workload `name`, None when it is managed outside the cluster."""
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "Job") and o["metadata"]["name"] == name:
            return o["spec"]["template"]["metadata"]["labels"]
        if o["kind"] == "CronJob" and o["metadata"]["name"] == name:
            return o["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return None


#: ServiceAccount annotations that give the pods a cloud identity (components/workload-identity)
#: in place of static object-store keys.
CLOUD_IDENTITY = ("eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account", "azure.workload.identity/client-id")


def cloud_identity(objs: list[dict[str, Any]]) -> bool:
    """Whether the pods' ServiceAccount carries a cloud identity: then no container may take
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from a Secret (it holds none)."""
    account = next((o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "churn-platform"), {})
    return any(k in account.get("metadata", {}).get("annotations", {}) for k in CLOUD_IDENTITY)


def _bucket(uri: str) -> str:
    return uri.removeprefix("s3://").split("/", 1)[0]


def check_buckets(objs: list[dict[str, Any]]) -> list[str]:
    """Every s3:// path a workload's args name (after $(VAR) expansion) is in the overlay's bucket,
    the one MLFLOW_ARTIFACTS_DESTINATION names: the only bucket the overlay has."""
    problems: list[str] = []
    for obj in objs:
        if obj["kind"] not in WORKLOADS:
            continue
        for c in pod_spec(obj)["containers"]:
            env = container_env(objs, c)
            if "MLFLOW_ARTIFACTS_DESTINATION" not in env:
                continue
            bucket = _bucket(env["MLFLOW_ARTIFACTS_DESTINATION"])
            for arg in (expand(a, env) for a in c.get("args", [])):
                if "$(" in arg:
                    problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {arg!r} names an undefined variable")
                elif arg.startswith("s3://") and _bucket(arg) != bucket:
                    problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {arg} is not in the overlay's "
                                    f"bucket {bucket} (MLFLOW_ARTIFACTS_DESTINATION)")  # fmt: skip
    return problems


def check_network_paths(objs: list[dict[str, Any]]) -> list[str]:
    """The paths between the platform's own workloads that the NetworkPolicies must leave open."""
    problems: list[str] = []
    for src, dst, port in NETWORK_PATHS:
        src_labels = _pod_labels(objs, src)
        if src_labels is None:  # not in this overlay (the dev-only bucket job)
            continue
        dst_labels = _pod_labels(objs, dst)
        if not reachable(objs, src_labels, dst_labels, 443 if dst_labels is None and port == 9000 else port):
            problems.append(f"{src}: the NetworkPolicies do not let its pods reach {dst} (port {port})")
    return problems


def check_one_off_jobs(objs: list[dict[str, Any]]) -> list[str]:
    """A Job's template is immutable: an apply that changes it (a new image tag, a Secret whose
    generated name changed with its content) fails on the Job. Ours ship as suspended CronJobs
    (a Job would also run again on every apply after its TTL deleted it: a training). Another
    (the dev bucket job, idempotent) has a TTL, so the next apply after it creates it afresh:
    without one, every apply failed once dev-datastores.env changed."""
    problems: list[str] = []
    for obj in objs:
        if obj["kind"] != "Job":
            continue
        where = f"Job/{obj['metadata']['name']}"
        if "ttlSecondsAfterFinished" not in obj["spec"]:
            problems.append(f"{where}: has no TTL, so an apply that changes its template fails for ever")
        if any("churn-platform" in c["image"] for c in pod_spec(obj)["containers"]):
            problems.append(f"{where}: runs our image, so an apply with a new tag fails (immutable template); "
                            "ship it as a suspended CronJob")  # fmt: skip
    return problems


def check_disruption_budgets(objs: list[dict[str, Any]]) -> list[str]:
    """A Deployment that may run more than one pod has a PodDisruptionBudget, and no budget
    holds back a pod that is not ready: with the default policy, a drain stalled on API pods
    that had no model to load yet, and two registry pods on one node went down together."""
    problems: list[str] = []
    budgets = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    least = {o["spec"]["scaleTargetRef"]["name"]: o["spec"].get("minReplicas", 1)
             for o in objs if o["kind"] == "HorizontalPodAutoscaler"}  # fmt: skip
    for budget in budgets:
        if budget["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            problems.append(f"PodDisruptionBudget/{budget['metadata']['name']}: a pod that is not ready blocks drains "
                            "(unhealthyPodEvictionPolicy: AlwaysAllow)")  # fmt: skip
    for obj in objs:
        name = obj["metadata"]["name"]
        if obj["kind"] != "Deployment":
            continue
        pods = least.get(name, obj["spec"].get("replicas", 1))  # an autoscaler's minimum, not a count it owns
        labels = obj["spec"]["template"]["metadata"]["labels"]
        selecting = [b for b in budgets
                     if all(labels.get(k) == v for k, v in b["spec"]["selector"].get("matchLabels", {}).items())]
        if not selecting and (obj["spec"].get("replicas", 1) > 1 or name in least):
            problems.append(f"Deployment/{name}: runs more than one pod but no PodDisruptionBudget selects them")
        for budget in selecting:  # one that no drain can satisfy at the fewest pods stalls every drain
            spec, floor = budget["spec"], budget["spec"].get("minAvailable")
            if spec.get("maxUnavailable") == 0 or (isinstance(floor, int) and floor >= pods > 0):
                problems.append(f"PodDisruptionBudget/{budget['metadata']['name']}: evicts none of "
                                f"Deployment/{name}'s {pods} pod(s)")  # fmt: skip
    return problems


def check_datastores(objs: list[dict[str, Any]]) -> list[str]:
    """In-cluster datastores keep their data on a PersistentVolumeClaim the overlay renders."""
    problems: list[str] = []
    claims = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    for name, volume in DATASTORE_VOLUMES.items():
        obj = next((o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == name), None)
        if obj is None:
            continue
        found = next((v for v in pod_spec(obj).get("volumes", []) if v["name"] == volume), {})
        claim = found.get("persistentVolumeClaim", {}).get("claimName")
        if claim is None:
            problems.append(f"Deployment/{name}: volume {volume!r} is not a PersistentVolumeClaim (lost with the pod)")
        elif claim not in claims:
            problems.append(f"Deployment/{name}: PersistentVolumeClaim {claim!r} is not rendered")
        elif obj["spec"].get("strategy", {}).get("type") != "Recreate":
            problems.append(f"Deployment/{name}: a ReadWriteOnce claim needs strategy Recreate")
    return problems


def check_cronjob(objs: list[dict[str, Any]], overlay: str, name: str) -> list[str]:
    """A scheduled job: its args, schedule, suspension, failure policy, writable /tmp and output,
    secrets and network paths."""
    cronjobs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "CronJob"}
    if name not in cronjobs:
        return [f"{overlay}: CronJob/{name} is not rendered"]
    want = CRONJOBS[name]
    policies = {o["metadata"]["name"] for o in objs if o["kind"] == "NetworkPolicy"}
    if want.feature_store_policy and (overlay == "dev" or want.feature_store_policy in policies):
        want = want._replace(feature_store=True)  # dev has its feature-db; elsewhere an opt-in component
    schedule, time_zone = want.schedule, want.time_zone
    where, cron = f"CronJob/{name}", cronjobs[name]
    job, spec = cron["spec"]["jobTemplate"]["spec"], pod_spec(cron)
    problems: list[str] = []
    if (cron["spec"]["schedule"], cron["spec"].get("timeZone")) != (schedule, time_zone):
        problems.append(f"{where}: schedule {cron['spec']['schedule']!r} ({cron['spec'].get('timeZone')}), "
                        f"not {schedule!r} ({time_zone})")  # fmt: skip
    suspended = cron["spec"].get("suspend") is True
    should_be = want.on_demand or (want.suspended_in_dev and overlay == "dev")
    if want.on_demand and not suspended:
        problems.append(f"{overlay}: {where} must be suspended: it runs on demand "
                        f"(kubectl create job --from=cronjob/{name})")  # fmt: skip
    elif should_be and not suspended:
        problems.append(f"{overlay}: {where} must be suspended in dev (opt-in there), suspend is "
                        f"{cron['spec'].get('suspend')}")  # fmt: skip
    elif suspended and not should_be:
        problems.append(f"{overlay}: {where} is suspended: it would never run in {overlay}")
    if (want.suspended_in_dev or want.on_demand) and "startingDeadlineSeconds" not in cron["spec"]:
        problems.append(f"{where}: needs startingDeadlineSeconds, or resuming it starts a missed run at once")
    if cron["spec"].get("concurrencyPolicy") != "Forbid":
        problems.append(f"{where}: concurrencyPolicy must be Forbid (runs must not overlap)")
    if not {"successfulJobsHistoryLimit", "failedJobsHistoryLimit"} <= set(cron["spec"]):
        problems.append(f"{where}: needs successful and failed history limits")
    fail_on = sorted(
        code
        for rule in job.get("podFailurePolicy", {}).get("rules", [])
        if rule["action"] == "FailJob" and rule.get("onExitCodes", {}).get("operator") == "In"
        for code in rule["onExitCodes"]["values"]
    )
    answers = list(want.answers)
    if fail_on != answers:
        problems.append(f"{where}: the pod failure policy must fail the Job on exit {answers}, got {fail_on}")
    if want.retried and job.get("backoffLimit", 6) < 1:
        problems.append(f"{where}: backoffLimit 0 never retries exit 3 (unreachable)")
    if not want.retried and job.get("backoffLimit", 6) != 0:
        problems.append(f"{where}: needs backoffLimit 0 (a retry would repeat what the failed run did)")
    if spec.get("restartPolicy") != "Never" or spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: needs restartPolicy Never and no service-account token")
    labels = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    if labels.get("app.kubernetes.io/name") != name:
        problems.append(f"{where}: pods must carry app.kubernetes.io/name={name} (the NetworkPolicies select it)")
    (container,) = spec["containers"]
    args = container.get("args", [])
    if args != list(want.args):
        problems.append(f"{where}: args must be {list(want.args)} (the role, then its flags), got {args}")
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in empty_dirs]
    # The root filesystem is read-only: temporary files (and HOME) need /tmp, the output its folder.
    writable = {"/tmp": ""}
    if "--output-dir" in args[:-1]:
        writable[args[args.index("--output-dir") + 1]] = "--output-dir "
    expanded = [expand(a, container_env(objs, container)) for a in args]
    for flag in FILE_OUTPUTS:
        value = expanded[expanded.index(flag) + 1] if flag in expanded[:-1] else "s3://"
        if not value.startswith("s3://"):
            writable[str(PurePosixPath("/app", value).parent)] = f"{flag} {value}: its folder "
    for path, what in writable.items():
        if not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts):
            problems.append(f"{where}: {what}{path} is not on a writable emptyDir")
    secrets = {
        e["name"] for e in container.get("env", []) if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
    }
    keys = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    needed = set() if cloud_identity(objs) else keys
    if needed != keys and keys & secrets:
        problems.append(f"{where}: takes {sorted(keys & secrets)} from a Secret, but its identity is the cloud's")
    if want.inference_log:
        needed.add("CHURN_INFERENCE_LOG_URL")
    if want.feature_store:
        needed.add("CHURN_FEATURE_STORE_URL")
    if want.alerts:
        needed |= JOB_SECRETS
    if overlay == "prod" and want.mlflow:
        needed |= {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}  # the basic-auth registry
    if needed - secrets:
        problems.append(f"{where}: variables not taken from churn-secrets: {sorted(needed - secrets)}")
    given = {e["name"] for e in container.get("env", [])} | {
        key for ref in container.get("envFrom", []) for key in _env_from_keys(objs, ref)
    }
    if not want.inference_log and given & {"CHURN_INFERENCE_LOG_URL", "*"}:
        problems.append(f"{where}: gets CHURN_INFERENCE_LOG_URL (the database password) but never reads the log")
    object_store = _pod_labels(objs, "minio")
    inference_db = (_pod_labels(objs, "inference-db"), 5432)
    paths = {"the object store": (object_store, 9000 if object_store else 443)}
    if want.mlflow:
        paths["MLflow"] = (_pod_labels(objs, "mlflow"), 5000)
    if want.feature_store:
        paths["the feature-store database"] = (_pod_labels(objs, "feature-db"), 5432)
    if want.inference_log:
        paths["the inference-log database"] = inference_db
    # Managed databases outside the cluster share port 5432: a job that needs one (the feature
    # store's) can reach them all, and only their credentials and firewalls tell them apart.
    elif not (want.feature_store and inference_db[0] is None) and reachable(objs, labels, *inference_db):
        problems.append(f"{where}: the NetworkPolicies let its pods reach the inference-log database (port 5432), "
                        "which it never reads")  # fmt: skip
    for what, (dst, port) in paths.items():
        if not reachable(objs, labels, dst, port):
            problems.append(f"{where}: the NetworkPolicies do not let its pods reach {what} (port {port})")
    return problems


def _env_from_keys(objs: list[dict[str, Any]], ref: dict[str, Any]) -> set[str]:
    """The variables an envFrom entry sets: its ConfigMap's or Secret's keys, "*" (any) for a
    Secret made outside git (staging, prod)."""
    kind, source = ("ConfigMap", ref["configMapRef"]) if "configMapRef" in ref else ("Secret", ref.get("secretRef", {}))
    obj = next((o for o in objs if o["kind"] == kind and o["metadata"]["name"] == source.get("name")), None)
    if obj is None:
        return {"*"} if kind == "Secret" else set()
    return set(obj.get("data", {})) | set(obj.get("stringData", {}))


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
        if spec.get("enableServiceLinks") is not False and any(
            "churn-platform" in c["image"] for c in spec["containers"]
        ):
            problems.append(f"{where}: needs enableServiceLinks: false (Service `mlflow` sets MLFLOW_PORT=tcp://...)")
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
    if "replicas" in api["spec"]:  # kubectl apply would reset the autoscaler's count to it
        problems.append("churn-api: spec.replicas is set, but its HorizontalPodAutoscaler owns the count")
    if overlay == "prod" and (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) != (3, 10):
        problems.append("prod: HPA must scale 3-10")
    if overlay == "prod":
        mlflow = find(objs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
        if "basic-auth" not in mlflow["args"]:
            problems.append("prod: the MLflow server must run in basic-auth mode")
        if "MLFLOW_TRACKING_PASSWORD" not in {e["name"] for e in container.get("env", [])}:
            problems.append("prod: the API needs tracking credentials for the basic-auth registry")
    data = config_maps[next(r["configMapRef"]["name"] for r in container["envFrom"] if "configMapRef" in r)]["data"]
    if overlay != "dev":  # the alerts and dashboards ship with staging and prod (components/observability)
        kinds = {o["kind"] for o in objs}
        if not {"PrometheusRule", "ServiceMonitor"} <= kinds:
            problems.append(f"{overlay}: the observability component is not rendered (no PrometheusRule)")
        if not data.get("CHURN_PUSHGATEWAY_URL"):
            problems.append(f"{overlay}: CHURN_PUSHGATEWAY_URL is empty: the jobs' results never reach the alerts")
    if overlay == "dev" and hpa["spec"]["minReplicas"] != 1:
        problems.append("dev: one API replica")
    for name in CRONJOBS:
        problems += check_cronjob(objs, overlay, name)
    problems += check_buckets(objs) + check_network_paths(objs) + check_one_off_jobs(objs) + check_datastores(objs)
    problems += check_disruption_budgets(objs)
    # Every variable the settings read is set for the API, by the ConfigMap or a Secret reference,
    # but the jobs' own secrets (checked on each job); a secret is never in the ConfigMap.
    provided = set(data) | {e["name"] for e in container.get("env", [])}
    missing = sorted(set(environment_variables()) - provided - JOB_SECRETS)
    if missing:
        problems.append(f"churn-api: variables the code reads are not set: {missing}")
    exposed = sorted(name for name, (_, _, secret) in environment_variables().items() if secret and name in data)
    if exposed:
        problems.append(f"ConfigMap churn-config: holds secrets {exposed}: they belong in churn-secrets")
    return problems
