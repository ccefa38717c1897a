"""A person adds the alias in the MLflow UI (real headless Chromium); the platform follows."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from click.testing import CliRunner
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from churn_platform.cli import main
from churn_platform.settings import get_settings
from churn_platform.training import TrainConfig, train

pytestmark = pytest.mark.integration


@pytest.fixture
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromium-driver are needed (scripts/ensure-browser.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


def cli_json(*args: str) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_alias_added_in_the_mlflow_ui_is_honoured(stack_env, model_name, browser, tmp_path):
    settings = get_settings()
    for seed in (1, 2):
        train(TrainConfig(n_rows=600, seed=seed, model_name=model_name), settings)
    assert CliRunner().invoke(main, ["promote", "--model-name", model_name, "--version", "1"]).exit_code == 0

    browser.get(f"{stack_env.tracking_uri}/#/models/{model_name}/versions/2")
    wait = WebDriverWait(browser, 60)
    # v2 holds no alias (no Challenger without a Production when it was trained): the UI's "Add".
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button[title='Add aliases']"))).click()
    box = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "[role=dialog] input[role=combobox]")))
    box.send_keys("Production")
    time.sleep(0.3)
    box.send_keys(Keys.ENTER)
    browser.find_element(By.XPATH, "//button[.='Save aliases']").click()
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, "[role=dialog]")))
    browser.save_screenshot(str(tmp_path / "ui-after-save.png"))

    status = cli_json("status", "--model-name", model_name)
    assert status["production"]["version"] == 2
    assert status["production"]["promoted_via"] == "external"
    events = cli_json("history", "--model-name", model_name)["events"]
    assert (events[0]["action"], events[0]["from"], events[0]["to"]) == ("external", 1, 2)
    result = CliRunner().invoke(main, ["rollback", "--model-name", model_name])
    assert result.exit_code == 0 and "v2 -> v1" in result.output
