"""The managed-cloud guides (docs/cloud/*.md) and the workload-identity components, rendered offline.

Each component on top of the prod overlay must render without warnings, validate against
Kubernetes 1.30, keep every policy of tests/deploy/policies.py and do exactly its job: name the
cloud identity on the ServiceAccount, label the pods the cloud's webhook selects, and leave no
container taking the static object-store keys from a Secret (with a cloud identity the Secret
has none, and a missing key stops the pod from starting). The overlays the guides tell users to
write are rendered the same way, and every path the guides name must exist.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.policies import WORKLOADS, check, pod_spec, render, selects, validate
from tests.services import REPO

COMPONENTS = REPO / "deploy" / "components" / "workload-identity"
GUIDES = REPO / "docs" / "cloud"
PROD = REPO / "deploy" / "overlays" / "prod"
KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

#: Per cloud: the ServiceAccount annotation naming the cloud identity, the pod labels its webhook
#: selects on (EKS and GKE need none), and what the component adds beside its patches.
CLOUDS: dict[str, tuple[str, dict[str, str], set[tuple[str, str]]]] = {
    "aws": ("eks.amazonaws.com/role-arn", {}, set()),
    "gcp": ("iam.gke.io/gcp-service-account", {}, {("NetworkPolicy", "allow-gke-metadata-server")}),
    "azure": ("azure.workload.identity/client-id", {"azure.workload.identity/use": "true"}, set()),
}
#: The GKE metadata server: Dataplane V2 (169.254.169.254:80), Calico (169.254.169.252:988).
METADATA_SERVER = {("169.254.169.254/32", 80), ("169.254.169.252/32", 988)}


def _overlay(where: Path, resources: list[Path], components: list[Path]) -> Path:
    """A throwaway overlay (kustomize refuses absolute paths: they are made relative)."""
    where.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(p, where) for p in resources],
        "components": [os.path.relpath(p, where) for p in components],
    }
    (where / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return where


def _workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in WORKLOADS]


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    template = obj["spec"]["jobTemplate"]["spec"]["template"] if obj["kind"] == "CronJob" else obj["spec"]["template"]
    return template["metadata"].get("labels", {})


def _static_keys(objs: list[dict[str, Any]]) -> list[str]:
    """Every container that takes an object-store key from a Secret, or a whole Secret."""
    found = []
    for obj in _workloads(objs):
        for c in pod_spec(obj)["containers"]:
            where = f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}"
            found += [f"{where}: {e['name']}" for e in c.get("env", [])
                      if e["name"] in KEYS and "secretKeyRef" in e.get("valueFrom", {})]  # fmt: skip
            found += [f"{where}: every key of Secret {r['secretRef']['name']}" for r in c.get("envFrom", [])
                      if "secretRef" in r]  # fmt: skip
    return found


def _problems(objs: list[dict[str, Any]], allowed: frozenset[str] = frozenset()) -> list[str]:
    """The prod policies' findings, less those a cloud identity explains and those allowed."""
    return [p for p in check(objs, "prod") if p not in allowed]


def _without_component(obj: dict[str, Any], annotation: str, labels: dict[str, str]) -> dict[str, Any]:
    """The object as the component found it: its annotation, labels and key removals undone."""
    obj = copy.deepcopy(obj)
    if obj["kind"] == "ServiceAccount":
        annotations = obj["metadata"].get("annotations", {})
        annotations.pop(annotation, None)
        if not annotations:
            obj["metadata"].pop("annotations", None)
    if obj["kind"] in WORKLOADS:
        for key in labels:
            _pod_labels(obj).pop(key, None)
        for c in pod_spec(obj)["containers"]:
            c["env"] = [e for e in c.get("env", []) if e["name"] not in KEYS]
    return obj


@pytest.mark.parametrize("cloud", CLOUDS)
def test_component_on_prod_renders_validates_and_keeps_the_policies(cloud, tmp_path):
    annotation, labels, added = CLOUDS[cloud]
    objs, stderr = render(_overlay(tmp_path / "overlay", [PROD], [COMPONENTS / cloud]))
    assert "warning" not in stderr.lower(), stderr
    validate(objs, tmp_path)
    assert _problems(objs) == []

    (account,) = [o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "churn-platform"]
    # A placeholder nobody can mistake for a value; the guides' overlays set the real one.
    assert "REPLACE_" in account["metadata"]["annotations"][annotation]
    assert account.get("automountServiceAccountToken") is False
    assert _static_keys(objs) == []
    for obj in _workloads(objs):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert pod_spec(obj)["serviceAccountName"] == "churn-platform", where
        assert pod_spec(obj)["automountServiceAccountToken"] is False, where  # the webhooks project their own token
        assert _pod_labels(obj).items() >= labels.items(), where

    # Nothing else changed: prod's objects, as they were, plus what the component adds.
    prod, _ = render(PROD)
    before = {(o["kind"], o["metadata"]["name"]): o for o in prod}
    after = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    assert set(after) - set(before) == added
    assert set(before) <= set(after)
    for key, obj in before.items():
        undone = _without_component(after[key], annotation, labels)
        assert undone == _without_component(obj, annotation, labels), key
    # Before the component, every workload that took keys still took them (the removal did something).
    assert _static_keys(prod)


def test_gcp_component_lets_every_workload_reach_the_metadata_server(tmp_path):
    objs, _ = render(_overlay(tmp_path / "overlay", [PROD], [COMPONENTS / "gcp"]))
    (policy,) = [o for o in objs if o["metadata"]["name"] == "allow-gke-metadata-server"]
    assert policy["spec"]["policyTypes"] == ["Egress"]
    allowed = {(peer["ipBlock"]["cidr"], port["port"])
               for rule in policy["spec"]["egress"] for peer in rule["to"] for port in rule["ports"]}  # fmt: skip
    assert allowed == METADATA_SERVER
    for obj in _workloads(objs):
        assert selects(policy["spec"]["podSelector"], _pod_labels(obj)), obj["metadata"]["name"]


# ------------------------------------------------------------------------------- the guides

_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
_OVERLAY_HEREDOC = re.compile(r"cat > (deploy/overlays/[\w.-]+)/kustomization\.yaml <<(EOF|'EOF')\n(.*?)\nEOF\n", re.S)
_VARIABLE = re.compile(r"(?<!\\)\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))")
_REPO_PATH = re.compile(r"(?<![\w/.-])deploy/[\w./-]*[\w-]")


def _guide_overlays() -> list[tuple[str, str, str]]:
    """(guide, overlay folder, kustomization text) of every overlay a guide writes, in order."""
    found = []
    for guide in sorted(GUIDES.glob("*.md")):
        for block in _BLOCK.findall(guide.read_text()):
            found += [(guide.name, folder, text + "\n") for folder, _, text in _OVERLAY_HEREDOC.findall(block)]
    return found


OVERLAYS = _guide_overlays()
#: eks-1, gke-1 (Cloud Storage's S3 API), gke-2 (Workload Identity), aks-1: the guide, then which of its overlays.
OVERLAY_IDS = [
    f"{guide.removesuffix('.md')}-{[o[0] for o in OVERLAYS[: i + 1]].count(guide)}"
    for i, (guide, _, _) in enumerate(OVERLAYS)
]


def _expand(text: str) -> str:
    """What bash writes for an unquoted heredoc, each $VARIABLE a sample value ("$BUCKET" -> "bucket")."""
    return _VARIABLE.sub(lambda m: (m[1] or m[2]).lower().replace("_", "-"), text).replace("\\$", "$")


def test_each_guide_writes_an_overlay():
    assert {guide for guide, _, _ in OVERLAYS} == {"eks.md", "gke.md", "aks.md"}


@pytest.mark.parametrize(("guide", "folder", "text"), OVERLAYS, ids=OVERLAY_IDS)
def test_guide_overlay_renders_validates_and_keeps_the_policies(guide, folder, text, tmp_path):
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    kustomization = yaml.safe_load(_expand(text))
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / "kustomization.yaml").write_text(_expand(text))
    objs, stderr = render(tmp_path / folder)
    assert "warning" not in stderr.lower(), stderr
    validate(objs, tmp_path)
    rendered = yaml.safe_dump_all(objs)
    assert "REPLACE_" not in rendered, "a placeholder of the component is left"
    # Jobs an overlay leaves out on purpose (their data paths are s3://, which the cloud's store
    # does not speak) are the only other departures from prod's policies.
    dropped = {p["patch"].split("name: ")[-1].strip() for p in kustomization.get("patches", [])
               if "$patch: delete" in p.get("patch", "")}  # fmt: skip
    assert _problems(objs, frozenset(f"prod: CronJob/{name} is not rendered" for name in dropped)) == []
    # A job left out pushes nothing: an alert that fires when it never pushed would never clear.
    alerts = {r.get("alert") for o in objs if o["kind"] == "PrometheusRule" for g in o["spec"]["groups"]
              for r in g["rules"]}  # fmt: skip
    assert "churn-score" not in dropped or "ChurnBatchScoringNotRun" not in alerts, guide
    assert "ChurnBatchScoringFailed" in alerts and len(alerts) >= 20  # the rest stay
    for obj in _workloads(objs):
        for c in pod_spec(obj)["containers"]:
            assert c["image"] == "image:tag", f"{obj['metadata']['name']}: {c['image']} is not the guide's image"

    identity = [c for c in CLOUDS if f"../../components/workload-identity/{c}" in kustomization.get("components", [])]
    (account,) = [o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "churn-platform"]
    if identity:
        (cloud,) = identity
        annotation, labels, _ = CLOUDS[cloud]
        assert account["metadata"]["annotations"][annotation], annotation
        assert _static_keys(objs) == []
        assert all(_pod_labels(o).items() >= labels.items() for o in _workloads(objs))
    else:  # keys in the Secret (GKE with Cloud Storage's S3 API): every workload still takes them
        assert not account["metadata"].get("annotations")
        assert _static_keys(objs)


@pytest.mark.parametrize("guide", sorted(p.name for p in GUIDES.glob("*.md")))
def test_every_path_a_guide_names_exists(guide):
    text = (GUIDES / guide).read_text()
    blocks = _BLOCK.findall(text)
    created = {m for b in blocks for m in re.findall(r"mkdir -p (deploy/[\w./-]+)", b)}
    problems = []
    for path in sorted(set(_REPO_PATH.findall(text))):
        if not (REPO / path).exists() and not any(path == c or path.startswith(c + "/") for c in created):
            problems.append(f"{path} does not exist and the guide does not create it")
    for block in blocks:
        for path in re.findall(r"kubectl [^\n]*-k (\S+)", block):
            if path not in created and not (REPO / path).is_dir():
                problems.append(f"kubectl ... -k {path}: no such overlay")
    for _, folder, overlay in (o for o in OVERLAYS if o[0] == guide):
        kustomization = yaml.safe_load(_expand(overlay))
        for path in kustomization.get("resources", []) + kustomization.get("components", []):
            if not (REPO / folder / path).resolve().is_dir():
                problems.append(f"{folder}: {path} does not exist")
    for target, anchor in re.findall(r"\]\((\.\./[\w./-]+\.md)(?:#([\w-]+))?\)", text):
        linked = (GUIDES / target).resolve()
        if not linked.is_file():
            problems.append(f"link to {target}: no such file")
        elif anchor and anchor not in {_slug(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(), re.M)}:
            problems.append(f"link to {target}#{anchor}: no such heading")
    assert problems == []


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize(
    ("guide", "cloud", "musts"),
    [
        ("eks.md", "aws", ["withOIDC: true", "enableNetworkPolicy"]),
        ("gke.md", "gcp", ["--workload-pool=", "--enable-dataplane-v2"]),
        ("aks.md", "azure", ["--enable-oidc-issuer", "--enable-workload-identity", "--network-policy"]),
    ],
)
def test_guide_sets_up_the_identity_its_component_needs(guide, cloud, musts):
    text = (GUIDES / guide).read_text()
    # The cluster's OIDC issuer / workload pool and network policy enforcement, the component, the
    # Secret keys the overlays read, a training run and the way back out.
    for must in [*musts, f"deploy/components/workload-identity/{cloud}", "MLFLOW_BACKEND_STORE_URI",
                 "CHURN_INFERENCE_LOG_URL", "CHURN_ADMIN_API_KEY", "MLFLOW_TRACKING_PASSWORD", "basic_auth.ini",
                 "flask-secret-key", "create job --from=cronjob/churn-train train-now", "Teardown"]:  # fmt: skip
        assert must in text, f"{guide}: {must!r}"
