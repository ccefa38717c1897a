"""`rollback --to N` on the embedded registry: back along the audit trail, never off it."""

from __future__ import annotations

import json

from click.testing import CliRunner

from churn_platform.cli import main
from churn_platform.settings import get_settings
from churn_platform.training import TrainConfig, train


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_rollback_to_an_earlier_production_version(embedded, model_name):
    for seed in (1, 2, 3, 4):
        train(TrainConfig(n_rows=300, seed=seed, model_name=model_name), get_settings())
    for version in ("1", "2", "3"):
        assert cli("promote", "--model-name", model_name, "--version", version, "--force").exit_code == 0
    refused = cli("rollback", "--model-name", model_name, "--to", "4")
    assert refused.exit_code == 2 and "v4 did not hold Production before v3" in refused.output
    done = cli("rollback", "--model-name", model_name, "--to", "1", "--reason", "back to basics")
    assert done.exit_code == 0 and "v3 -> v1" in done.output
    status = json.loads(cli("status", "--model-name", model_name, "--json").output)
    assert status["production"]["version"] == 1
    assert cli("rollback", "--model-name", model_name).exit_code == 2  # nothing before v1 any more
