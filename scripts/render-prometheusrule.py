"""Write deploy/components/observability/prometheusrule.yaml from the plain rules file.

The alerts have one source of truth, deploy/observability/prometheus/rules.yml (any
Prometheus reads it); prometheus-operator wants them wrapped in a PrometheusRule. Run after
editing the rules; tests/observability/test_alerts.py fails while the two differ.
"""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy/observability/prometheus/rules.yml"
TARGET = REPO / "deploy/components/observability/prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/observability/prometheus/rules.yml (one source of truth):\n"
    "#   .venv/bin/python scripts/render-prometheusrule.py\n"
    "# tests/observability/test_alerts.py fails when the two differ.\n"
)


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        # release: prometheus, like the ServiceMonitor: what kube-prometheus-stack's default selectors
        # match when its Helm release is named prometheus (docs/operations.md: another name).
        "metadata": {"name": "churn-platform", "labels": {"app.kubernetes.io/name": "churn-platform",
                                                          "release": "prometheus"}},  # fmt: skip
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=200)


if __name__ == "__main__":
    TARGET.write_text(render())
