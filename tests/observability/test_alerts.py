"""The alert rules, checked and unit-tested by Debian's promtool (scripts/ensure-prometheus.sh
installs it; `make test` runs that), and their Kustomize component rendered and validated."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx
import pytest
import yaml

from churn_platform.cli import main
from churn_platform.processes import free_port
from tests.deploy.policies import BIN, CRONJOBS, check, render
from tests.services import REPO, start_process, wait_http

RULES = REPO / "deploy" / "observability" / "prometheus" / "rules.yml"
#: The promtool cases; those that judge days are evaluated every 10 minutes, not every minute.
TESTS = [Path(__file__).with_name(name) for name in ("alerts.test.yml", "alerts-days.test.yml")]
COMPONENT = REPO / "deploy" / "components" / "observability"
RUNBOOKS = REPO / "docs" / "operations.md"
ALERTMANAGER = REPO / "deploy" / "observability" / "alertmanager" / "alertmanager.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:  # never a skip: CI must prove the rules
        pytest.fail("promtool missing: run scripts/ensure-prometheus.sh (make test does)")
    return found


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules_and_every_alert_fires_and_stays_quiet_in_its_unit_tests():
    # Lint fatal: two rules of one name and the same labels (the lint's "duplicate rules") only warned.
    checked = subprocess.run([promtool(), "check", "rules", "--lint-fatal", str(RULES)], capture_output=True,
                             text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool(), "test", "rules", *(t.name for t in TESTS)], cwd=TESTS[0].parent,
                            capture_output=True, text=True)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = [case for file in TESTS for test in yaml.safe_load(file.read_text())["tests"]
             for case in test["alert_rule_test"]]  # fmt: skip
    for alert in alerts():
        name = alert["alert"]
        assert any(c["alertname"] == name and c["exp_alerts"] for c in cases), f"{name}: no firing case"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in cases), f"{name}: no quiet case"


def test_every_alert_says_what_and_how_bad_and_links_its_runbook():
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", RUNBOOKS.read_text(), re.M)}  # fmt: skip
    for alert in alerts():
        assert alert["labels"]["severity"] in ("critical", "warning", "info"), alert["alert"]
        notes = alert["annotations"]
        assert notes["summary"] and notes["description"], alert["alert"]
        anchor = notes["runbook_url"].split("docs/operations.md#", 1)[1]
        assert anchor == alert["alert"].lower() and anchor in anchors, f"{alert['alert']}: no runbook section"


def _pushes(args: tuple[str, ...]) -> bool:
    """Whether the command a CronJob runs pushes its results (``job_metrics.pushes`` marks it)."""
    command: click.Command | None = main
    for name in args:
        if not isinstance(command, click.Group):
            break
        command = command.get_command(click.Context(command), name)
    assert command is not None, args
    return hasattr(command.callback, "pushed_as")


def test_the_component_carries_the_same_rules_and_renders_with_an_overlay(tmp_path):
    rendered = subprocess.run([sys.executable, str(REPO / "scripts" / "render-prometheusrule.py")],
                              capture_output=True, text=True)  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    shipped = yaml.safe_load((COMPONENT / "prometheusrule.yaml").read_text())
    assert shipped["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    # The dev overlay with the component, as a user adds it (an overlay's components, in its namespace).
    dev = REPO / "deploy" / "overlays" / "dev"
    namespace = yaml.safe_load((dev / "kustomization.yaml").read_text())["namespace"]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": [os.path.relpath(dev, tmp_path)],
        "components": [os.path.relpath(COMPONENT, tmp_path)],
    }))  # fmt: skip
    objs, stderr = render(tmp_path)
    assert "warning" not in stderr.lower(), stderr
    kinds = {o["kind"]: o for o in objs}
    rule, monitor = kinds["PrometheusRule"], kinds["ServiceMonitor"]
    assert rule["metadata"]["namespace"] == monitor["metadata"]["namespace"] == namespace
    assert check(objs, "dev") == []  # the overlay's policies still hold with the component
    pushes = next(o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "churn-jobs-pushgateway")
    selected = set(pushes["spec"]["podSelector"]["matchExpressions"][0]["values"])
    assert selected == {name for name, job in CRONJOBS.items() if _pushes(job.args)}  # the jobs that push
    assert "churn-features" in selected and "churn-train" not in selected
    api = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "churn-api")
    service = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "churn-api")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    dashboards = next(o for o in objs if o["metadata"]["name"] == "churn-platform-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"  # what Grafana's sidecar watches
    assert sorted(dashboards["data"]) == ["churn-data.json", "churn-model.json", "churn-quality.json",
                                          "churn-service.json"]  # fmt: skip
    assert all(json.loads(body)["uid"] == name.removesuffix(".json") for name, body in dashboards["data"].items())
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    port = api["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)
    # The rules as rendered (namespace and all) are what promtool accepts.
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run([promtool(), "check", "rules", str(tmp_path / "rules.yml")], capture_output=True,
                             text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Everything else validates strictly against Kubernetes' own schemas (the CRDs' kinds are not in them).
    plain = [o for o in objs if o["kind"] not in ("PrometheusRule", "ServiceMonitor")]
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump_all(plain))
    done = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k", "1.30.0", "--quiet",
                           str(tmp_path / "plain.yaml")], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_profiles_prometheus_and_alertmanager_configs_are_valid():
    config = REPO / "deploy" / "observability" / "prometheus" / "prometheus.yml"
    checked = subprocess.run([promtool(), "check", "config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    amtool = shutil.which("amtool")
    assert amtool, "amtool missing: run scripts/ensure-prometheus.sh"
    checked = subprocess.run([amtool, "check-config", str(REPO / "deploy/observability/alertmanager/alertmanager.yml")],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alertmanager_inhibits_the_apis_alerts_only_while_the_whole_api_is_down(tmp_path):
    """The shipped inhibit rule in Debian's Alertmanager (promtool cannot test one): one replica
    not ready hides nothing (the replicas still serving may fail on their own), ChurnApiDown
    hides its job's ChurnApiNotReady, 5xx and latency, and no other job's."""
    found = shutil.which("prometheus-alertmanager")
    if found is None:  # never a skip, as for promtool
        pytest.fail("prometheus-alertmanager missing: run scripts/ensure-prometheus.sh (make test does)")
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v2"
    process = start_process("alertmanager", [
        found, f"--config.file={ALERTMANAGER}", f"--storage.path={tmp_path / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
    ], tmp_path)  # fmt: skip

    def send(job: str, *alerts: dict[str, str]) -> None:
        body = [{"labels": {"job": job, "severity": "critical", **labels}} for labels in alerts]
        posted = httpx.post(f"{base}/alerts", json=body, timeout=10)
        assert posted.status_code == 200, posted.text

    def inhibited() -> dict[str, bool]:
        """Whether each alert (job, name, instance or endpoint) is inhibited, once two readings a
        second apart agree (the inhibitor takes in posted alerts asynchronously)."""
        seen, deadline = None, time.monotonic() + 10
        while time.monotonic() < deadline:
            alerts = httpx.get(f"{base}/alerts", timeout=10).json()
            now = {" ".join(a["labels"][k] for k in ("job", "alertname", "instance", "endpoint") if k in a["labels"]):
                   bool(a["status"]["inhibitedBy"]) for a in alerts}  # fmt: skip
            if now == seen:
                return now
            seen = now
            time.sleep(1)
        raise AssertionError(f"Alertmanager's alerts kept changing: {seen}")

    try:
        wait_http(process, f"http://127.0.0.1:{port}/-/ready", timeout=30)
        send("churn-api", {"alertname": "ChurnApiNotReady", "instance": "api-1"}, {"alertname": "ChurnApi5xxRate"},
             {"alertname": "ChurnApiLatencyHigh", "endpoint": "/predict/by-id"})  # fmt: skip
        send("other-api", {"alertname": "ChurnApi5xxRate"})
        assert inhibited() == {"churn-api ChurnApiNotReady api-1": False, "churn-api ChurnApi5xxRate": False,
                               "churn-api ChurnApiLatencyHigh /predict/by-id": False,
                               "other-api ChurnApi5xxRate": False}  # fmt: skip
        send("churn-api", {"alertname": "ChurnApiNotReady", "instance": "api-2"}, {"alertname": "ChurnApiDown"})
        assert inhibited() == {"churn-api ChurnApiDown": False, "churn-api ChurnApiNotReady api-1": True,
                               "churn-api ChurnApiNotReady api-2": True, "churn-api ChurnApi5xxRate": True,
                               "churn-api ChurnApiLatencyHigh /predict/by-id": True,
                               "other-api ChurnApi5xxRate": False}  # fmt: skip
    finally:
        process.stop()


def test_every_metric_the_rules_and_dashboards_name_is_one_the_code_exports():
    """A misspelt metric in a panel or a rule evaluates to no data, which the end-to-end test
    accepts from any panel of a dashboard that has another with data: named here, not found."""
    from churn_platform import job_metrics
    from serving.metrics import Metrics
    from tests.observability.test_prometheus_e2e import DASHBOARDS, dashboard_expressions

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    exported = {family.name + suffix for family in Metrics().registry.collect()
                for suffix in suffixes.get(family.type, ("",))}  # fmt: skip
    pushed = set(job_metrics.RESULTS) | set(re.findall(r'gauge\("(churn_\w+)"', Path(job_metrics.__file__).read_text()))
    exported |= {f"{name}{suffix}" for name in pushed for suffix in ("", "_total")}
    named = [(rule["alert"], rule["expr"]) for rule in alerts()] + dashboard_expressions()
    named += [(f"{path.stem} / ${v['name']}", v["query"]) for path in DASHBOARDS
              for v in json.loads(path.read_text())["templating"]["list"]]  # fmt: skip
    metric = re.compile(r"\b(churn_[a-z0-9_]+)\b(?!\()")  # not the start of a regex: churn_monitor_(a|b)
    unknown = {(where, name) for where, expr in named for name in metric.findall(expr) if name not in exported}
    assert not unknown, sorted(unknown)
