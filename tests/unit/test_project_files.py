"""The project's own files agree with each other (one source of truth per fact)."""

from __future__ import annotations

import dataclasses
import tomllib

import yaml

from churn_platform.training_config import TrainConfig
from tests.services import REPO


def test_conda_env_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(project)


def test_mlproject_defaults_match_the_training_defaults():
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    assert set(spec["entry_points"]) == {"train", "monitor"}
    params = spec["entry_points"]["train"]["parameters"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, param in params.items():
        expected = defaults[name]
        assert type(expected)(param["default"]) == expected, name
        assert f"{{{name}}}" in spec["entry_points"]["train"]["command"]


def test_readme_configuration_table_matches_the_settings():
    from churn_platform.settings import environment_variables

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        name, default = (cell.strip() for cell in row.strip("|").split("|")[:2])
        documented[name.strip("`")] = default
    expected = {
        name: ("unset" if default in (None, "") else f"`{default}`")
        for name, (default, _, _) in environment_variables().items()
    }
    assert documented == expected
