"""Screenshots of the real MLflow UI for docs/mlflow-ui.md (`make mlflow-ui-screenshots`).

In a throwaway folder: an `mlflow server` on SQLite and local artifacts (as `churn-platform
demo` starts it), filled through the project's own CLI with the story the guide tells: three
training runs on the Telco customers, `promote`, four weeks of `monitor --current`, a second
`promote`, a `rollback`. Then headless Chromium (selenium + chromedriver, as the UI test uses)
opens each page, waits for its content and saves docs/images/mlflow-ui/<name>.png. The
images replace the old ones only when every page was taken. Every process started here is
stopped at the end, on failure and on Ctrl-C. No test depends on these files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from churn_platform import data, processes
from churn_platform.processes import Process

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUT = REPO / "docs" / "images" / "mlflow-ui"
TELCO = "data/telco_churn.csv"  # relative: the runs record the path a user would type
MODEL = "churn"
ACTOR = "alice"
WIDTH, HEIGHT = 1400, 900
WAIT_S = 60

# Views the guide shows, as MLflow 3.17's UI stores them in the browser (localStorage keys
# are "<key>_v<version>"): the classic model-training navigation, the assistant not popped open.
LOCAL_STORAGE = {
    "mlflow.workflowType_v1": json.dumps("machine_learning"),
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": json.dumps(True),
}
TRAINING_COLUMNS = ("Dataset", "Source", "roc_auc", "pr_auc", "model_type", "c", "max_iter", "gate.passed")
MONITORING_COLUMNS = ("Dataset", "Source", "Models", "current_rows", "drift_share", "n_drifted_columns",
                      "prediction_drift_score", "model_version", "verdict")  # fmt: skip
COMPARE_HEIGHT = 1210  # the compare page's run details, parameters and metrics
UNCLIP_TABLE = """
const table = arguments[0].closest('.ReactVirtualized__Grid').parentElement.parentElement;
for (const grid of table.querySelectorAll('.ReactVirtualized__Grid')) {
  const full = grid.firstElementChild.scrollHeight + 'px';
  grid.style.height = full;
  grid.parentElement.style.height = full;
}"""
SEARCH = 'metrics.roc_auc > 0.84 and params.model_type = "logistic"'
DRIFT_CHARTS = "drift_share|prediction_drift|drift_score.tenure"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- the registry


class Registry:
    """The throwaway server and the CLI pointed at it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CHURN_", "AWS_", "OTEL_"))}
        self.env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "CHURN_REGISTRY_TIMEOUT_S": "60"}
        self.server: Process | None = None
        self.url = ""

    def start(self) -> None:
        port = processes.free_port()
        self.url = f"http://127.0.0.1:{port}"
        server_env = self.env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runners: 2 cores
        self.server = processes.start(
            "mlflow", [str(BIN / "mlflow"), "server",
                       "--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db",
                       "--artifacts-destination", str(self.folder / "artifacts"),
                       "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            self.folder, env=server_env, cwd=self.folder,
        )  # fmt: skip
        processes.wait_http(self.server, f"{self.url}/health", timeout=120, ok=lambda status: status == 200)
        self.env["MLFLOW_TRACKING_URI"] = self.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def cli(self, *args: str, cwd: Path | None = None, exit_codes: tuple[int, ...] = (0,)) -> str:
        """Run `churn-platform ARGS` against the server; its stdout."""
        t0 = time.perf_counter()
        done = subprocess.run([str(BIN / "churn-platform"), *args], env=self.env, cwd=cwd or self.folder,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        if done.returncode not in exit_codes:
            tail = "\n  ".join((done.stderr or done.stdout).strip().splitlines()[-10:])
            raise RuntimeError(f"churn-platform {' '.join(args)} exited {done.returncode}:\n  {tail}")
        log(f"churn-platform {' '.join(args[:3])} ... exit {done.returncode} ({time.perf_counter() - t0:.0f}s)")
        return done.stdout

    def train(self, *params: str) -> None:
        # From the checkout, so the run records `data/telco_churn.csv` and the git commit.
        self.cli("train", "--data", TELCO, *params, cwd=REPO)

    def monitor(self, current: Path) -> None:
        out = self.folder / "reports" / current.stem
        self.cli("monitor", "--current", str(current), "--output-dir", str(out), exit_codes=(0, 1))  # 1: drift


def current_weeks(folder: Path) -> list[Path]:
    """Four weeks of customers to monitor: real Telco customers, and in the last week a
    campaign that brought new, month-to-month customers at a higher price."""
    customers = data.load(REPO / TELCO).drop(columns=["churn"])
    weeks = [customers.sample(800, random_state=week) for week in (1, 2, 3, 4)]
    campaign = weeks[3].copy()
    new = np.random.default_rng(4).random(len(campaign)) < 0.5
    campaign.loc[new, "tenure"] = (campaign.loc[new, "tenure"] * 0.2).round().astype(int)
    campaign.loc[new, "contract"] = "Month-to-month"
    campaign.loc[new, "monthly_charges"] = (campaign.loc[new, "monthly_charges"] * 1.15).round(2)
    campaign["total_charges"] = (campaign["tenure"] * campaign["monthly_charges"]).round(2)
    weeks[3] = campaign
    paths = []
    for number, frame in enumerate(weeks, start=1):
        path = folder / f"week{number}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def fill(registry: Registry) -> None:
    """The story of the guide, through the CLI: v1 in Production and monitored, two candidates,
    v3 promoted and monitored (the last week drifts), rolled back to v1; v3 keeps Challenger."""
    weeks = current_weeks(registry.folder)
    registry.train("--model-type", "logistic", "--c", "1.0")
    registry.cli("promote", "--version", "1", "--reason", "first model", "--actor", ACTOR)
    registry.monitor(weeks[0])
    registry.monitor(weeks[1])
    registry.train("--model-type", "hist_gradient_boosting", "--learning-rate", "0.05", "--max-iter", "150")
    registry.train("--model-type", "logistic", "--c", "0.1")
    registry.cli("promote", "--version", "3", "--reason", "best validation roc_auc", "--actor", ACTOR)
    registry.monitor(weeks[2])
    registry.monitor(weeks[3])
    registry.cli("rollback", "--reason", "v3 catches fewer churners (recall) at the 0.5 threshold", "--actor", ACTOR)
    for line in (registry.cli("status") + registry.cli("history")).splitlines():
        log(f"  {line}")


# --------------------------------------------------------------------------- the browser


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        raise RuntimeError("chromium and chromedriver are needed: scripts/ensure-browser.sh installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}"):  # fmt: skip
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def literal(text: str) -> str:
    """``text`` as an XPath string literal."""
    return f'"{text}"' if '"' not in text else f"'{text}'"


class Pages:
    """Open MLflow UI pages, wait for what they show, save them."""

    def __init__(self, browser: webdriver.Chrome, url: str, folder: Path) -> None:
        self.browser, self.url, self.folder = browser, url, folder
        self.wait = WebDriverWait(browser, WAIT_S)
        self.taken: list[Path] = []
        self.viewport()
        browser.get(f"{url}/health")  # same origin as the UI: its localStorage
        for key, value in LOCAL_STORAGE.items():
            browser.execute_script("localStorage.setItem(arguments[0], arguments[1])", key, value)

    def open(self, route: str, *texts: str) -> None:
        self.browser.get(f"{self.url}/#{route}")
        for text in texts:
            self.text(text)

    def text(self, text: str, scope: str = "", whole: bool = False) -> WebElement:
        """The first visible element whose own text contains ``text`` (waits for it); with
        ``whole``, an element whose whole text, children's included, is ``text``."""
        test = (
            f"normalize-space(.) = {literal(text)}"
            if whole
            else f"text()[contains(normalize-space(.), {literal(text)})]"
        )
        xpath = f"{scope}//*[{test}]"

        def visible(browser: webdriver.Chrome) -> WebElement | bool:
            return next((e for e in browser.find_elements(By.XPATH, xpath) if e.is_displayed()), False)

        try:
            return self.wait.until(visible)
        except TimeoutException:
            raise RuntimeError(f"{self.browser.current_url}: no visible {text!r} after {WAIT_S}s") from None

    def until(self, what: str, condition: Callable[[webdriver.Chrome], object]) -> object:
        try:
            return self.wait.until(condition)
        except TimeoutException:
            raise RuntimeError(f"{self.browser.current_url}: {what} not seen after {WAIT_S}s") from None

    def click(self, css: str) -> None:
        self.until(css, ec.element_to_be_clickable((By.CSS_SELECTOR, css))).click()

    def viewport(self, height: int = HEIGHT) -> None:
        """The page WIDTH x ``height`` pixels, whatever the headless window's frame takes."""
        metrics = {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)

    def settle(self) -> None:
        """No spinner, no focus ring, no hover; charts done with their transitions."""
        spinners = "[role=progressbar], .du-bois-light-spin, [data-testid=loading-spinner]"
        self.until(
            "no spinner", lambda b: not any(e.is_displayed() for e in b.find_elements(By.CSS_SELECTOR, spinners))
        )
        self.browser.execute_script("document.activeElement && document.activeElement.blur()")
        self.browser.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": WIDTH // 2, "y": 2})
        time.sleep(0.8)

    def shot(self, name: str) -> None:
        """Save what the page shows now as ``name``.png."""
        self.settle()
        path = self.folder / f"{name}.png"
        if not self.browser.save_screenshot(str(path)):
            raise RuntimeError(f"no screenshot of {self.browser.current_url}")
        self.taken.append(path)
        log(f"  {name}.png ({path.stat().st_size // 1024} KB)")

    def sidebar(self, collapsed: bool) -> None:
        """Collapse the left navigation (the runs tables need the width) or bring it back."""

        def shown(browser: webdriver.Chrome) -> bool:
            return any(e.is_displayed() for e in browser.find_elements(By.XPATH, "//*[text()='Model registry']"))

        if shown(self.browser) == collapsed:
            self.click("button[aria-label='Toggle sidebar']")
            self.until("the sidebar toggled", lambda b: shown(b) != collapsed)

    def columns(self, names: tuple[str, ...]) -> None:
        """Toggle these columns in the runs table's column selector (each name once)."""
        self.browser.find_element(By.XPATH, "//button[contains(., 'Columns')]").click()
        scope = "//*[@data-component-id='mlflow.experiment_page.runs_table.column_selector']"
        for name in names:
            self.until(name, ec.element_to_be_clickable(
                (By.XPATH, f"{scope}//span[contains(@class, 'tree-title') and normalize-space(.)={literal(name)}]"))
            ).click()  # fmt: skip
        self.browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        self.until("the column selector closed", ec.invisibility_of_element_located((By.XPATH, scope)))

    def runs_view(self, mode: str) -> None:
        """The runs page's view: TABLE, CHART or ARTIFACT."""
        radio = f"//input[@name='runs-view-mode' and @value={literal(mode)}]/ancestor::label"
        self.browser.find_element(By.XPATH, radio).click()


def take(pages: Pages, client: MlflowClient) -> None:
    """Every page of the guide, in an order that toggles the navigation once."""
    training = client.get_experiment_by_name("Default").experiment_id
    monitoring = client.get_experiment_by_name("churn-monitoring").experiment_id
    runs = {int(v.version): v.run_id for v in client.search_model_versions(f"name='{MODEL}'")}
    names = {n: client.get_run(r).info.run_name for n, r in runs.items()}
    checks = client.search_runs([monitoring], order_by=["attributes.start_time ASC"])
    drifted = next(r for r in checks if r.data.tags.get("verdict") == "drift")
    found = client.search_runs([training], SEARCH)
    (v3_model,) = client.search_logged_models([training], filter_string=f"source_run_id = '{runs[3]}'")

    # The registry (the left navigation shown).
    audit = "//*[text()[contains(., 'churn_platform.audit.')]]"
    pages.open(f"/models/{MODEL}", "Version 3", "Challenger", "churn_platform.audit.")
    pages.text("Tags").click()  # folded: the versions and their aliases fill the page
    pages.until("the tags folded", ec.invisibility_of_element_located((By.XPATH, audit)))
    pages.shot("registered-model")
    pages.text("Tags").click()
    pages.text("churn_platform.audit.")
    events = pages.browser.find_elements(By.XPATH, audit)
    pages.browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", events[-1])  # the latest
    pages.shot("audit-trail")
    pages.open(f"/models/{MODEL}/versions/3", "Version 3", "Source Run", "Challenger", "gate")
    pages.shot("model-version")
    pages.click("button[title='Edit aliases']")
    box = pages.until("the alias editor", ec.visibility_of_element_located(
        (By.CSS_SELECTOR, "[role=dialog] input[role=combobox]")))  # fmt: skip
    box.send_keys("Production")
    time.sleep(0.3)  # the combobox takes the typed value a moment later (as in the UI test)
    box.send_keys(Keys.ENTER)
    pages.text("production", "//*[@role='dialog']")
    pages.shot("edit-aliases")
    pages.browser.find_element(By.XPATH, "//*[@role='dialog']//button[.='Cancel']").click()  # not saved
    pages.until("the alias editor closed", ec.invisibility_of_element_located((By.CSS_SELECTOR, "[role=dialog]")))

    # One training run, its artifacts and its model.
    pages.open(f"/experiments/{training}/runs/{runs[3]}", names[3], "roc_auc", "Logged models", "gate.reason")
    pages.shot("run-overview")
    pages.open(f"/experiments/{training}/runs/{runs[3]}/artifacts/plots/roc_calibration.png", "roc_calibration.png")
    pages.until("the ROC plot", lambda b: b.execute_script(
        "return [...document.images].some(i => i.complete && i.naturalWidth > 400)"))  # fmt: skip
    pages.shot("run-artifacts")
    pages.open(f"/experiments/{training}/models/{v3_model.model_id}/artifacts", "model.skops")
    pages.text("MLmodel").click()
    pages.text("serialization_format")
    pages.shot("model-artifacts")
    ids = json.dumps([runs[1], runs[2], runs[3]])
    pages.viewport(COMPARE_HEIGHT)  # before the page: it lays its tables out for the window it has
    pages.open(f"/compare-runs?runs={ids}&experiments={json.dumps([training])}", "Comparing 3 Runs", "model_type")
    pages.text("roc_auc", "//*[name()='svg']")
    pages.text("Visualizations").click()  # folded: the tables are the point here
    for switch in pages.browser.find_elements(By.XPATH, "//label[normalize-space(.)='Show diff only']")[:2]:
        switch.click()  # parameters and metrics: only what differs
    pages.until("the parameters that differ", lambda b: not any(
        e.is_displayed() for e in b.find_elements(By.XPATH, "//*[text()='learning_rate']")))  # fmt: skip
    pages.text("hist_gradient_boosting")
    # The metrics table is cut at 300 px (roc_auc, the last row, below it), and its name and value
    # columns scroll out of step: show it whole. Its rows are all rendered already.
    gate_metric = pages.browser.find_element(By.XPATH, "//a[normalize-space(.)='roc_auc']")
    pages.browser.execute_script(UNCLIP_TABLE, gate_metric)
    pages.until("roc_auc's row", lambda b: gate_metric.is_displayed())
    pages.shot("compare-runs")
    pages.viewport()

    # A monitoring run's report.
    pages.open(f"/experiments/{monitoring}/runs/{drifted.info.run_id}/artifacts/report.html", "summary.json")
    frame = pages.until("the report", ec.frame_to_be_available_and_switch_to_it((By.TAG_NAME, "iframe")))
    assert frame
    pages.text("DRIFT DETECTED")
    pages.browser.switch_to.default_content()
    pages.shot("monitoring-report")

    # The runs tables need the width of the navigation.
    pages.open(f"/experiments/{training}", names[1], names[2], names[3])
    pages.sidebar(collapsed=True)
    pages.columns(TRAINING_COLUMNS)
    pages.text("roc_auc")
    pages.text("gate.passed")
    pages.shot("training-runs")
    search = pages.browser.find_element(By.CSS_SELECTOR, "input[data-testid=search-box]")
    search.send_keys(SEARCH, Keys.ENTER)
    pages.text(f"{len(found)} matching runs", whole=True)
    pages.shot("training-runs-search")

    pages.open(f"/experiments/{monitoring}")
    pages.text(f"{len(checks)} matching runs", whole=True)
    pages.columns(MONITORING_COLUMNS)
    pages.text("drift_share")
    pages.text("verdict")
    pages.shot("monitoring-runs")
    pages.runs_view("CHART")
    charts = pages.until("the chart search", ec.visibility_of_element_located(
        (By.XPATH, "//input[@placeholder='Search metric charts']")))  # fmt: skip
    charts.send_keys(DRIFT_CHARTS)
    for title in ("drift_share", "prediction_drift_score", "drift_score.tenure"):
        pages.text(title)
    pages.shot("monitoring-charts")
    pages.sidebar(collapsed=False)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where the PNGs go (default: %(default)s)")
    parser.add_argument("--keep-folder", action="store_true", help="keep the throwaway registry (its path is printed)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what was started, as on Ctrl-C

    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="mlflow-ui-screenshots-"))
    registry = Registry(folder)
    try:
        log(f"mlflow server on SQLite in {folder}")
        registry.start()
        log(f"  {registry.url}")
        fill(registry)
        shots = folder / "png"
        shots.mkdir()
        log("screenshots (headless Chromium)")
        with chromium() as browser:
            pages = Pages(browser, registry.url, shots)
            take(pages, MlflowClient(registry.url, registry.url))
        args.out.mkdir(parents=True, exist_ok=True)
        for stale in args.out.glob("*.png"):
            stale.unlink()
        for path in pages.taken:
            shutil.move(path, args.out / path.name)
        log(f"{len(pages.taken)} screenshots in {args.out} ({time.perf_counter() - started:.0f}s)")
        return 0
    finally:
        registry.stop()
        if args.keep_folder:
            log(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C: everything started was stopped on the way out
