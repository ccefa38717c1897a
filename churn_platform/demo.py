"""`churn-platform demo`: the whole platform on the embedded default, in about two minutes.

Everything runs as the real thing would: an `mlflow server` on SQLite and a local
artifact folder, `mlflow run . -e train`, the API under uvicorn, the monitor as its own
command. Processes started here are stopped on exit and on Ctrl-C, unless
``--keep-running``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
import pandas as pd

from churn_platform import data, processes
from churn_platform.contract import PROBABILITY, ExitCode
from churn_platform.errors import ChurnPlatformError, DataSourceError
from churn_platform.processes import Process, ProcessFailed, free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ADMIN_KEY = "demo-admin-key"


class DemoFailed(ChurnPlatformError):
    exit_code = ExitCode.REFUSED


#: Left in every folder the demo makes: only such a folder (or an empty one) is wiped by the next run.
MARKER = ".churn-demo"


@dataclass
class Demo:
    folder: Path
    data: str
    n_rows: int
    traffic: int
    keep_running: bool
    env: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    step_no: int = 0
    started: float = field(default_factory=time.perf_counter)
    summary: dict[str, Any] = field(default_factory=dict)
    total_steps: int = 10

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.step_no += 1
        click.secho(f"\n[{self.step_no}/{self.total_steps}] {title}", bold=True)
        t0 = time.perf_counter()
        try:
            yield
        except DemoFailed:
            raise
        except ChurnPlatformError as exc:
            raise DemoFailed(f"step {self.step_no} ({title}) failed: {exc}") from exc
        click.secho(f"      done in {time.perf_counter() - t0:.1f}s", fg="green")

    def run(
        self, *cmd: str, timeout: float = 300, verdicts: tuple[int, ...] = (ExitCode.OK,)
    ) -> subprocess.CompletedProcess:
        # A session of its own, stopped whole: `mlflow run` trains in a grandchild (bash -c python
        # ...), which outlived a demo stopped by SIGTERM when only the direct child was killed.
        proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # fmt: skip
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:  # an interrupt, or the timeout
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        if done.returncode not in verdicts:
            tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
            raise DemoFailed(f"`{' '.join(cmd[:4])} ...` exited {done.returncode}:\n      " + "\n      ".join(tail))
        return done

    def background(self, name: str, *cmd: str) -> Process:
        proc = processes.start(name, list(cmd), self.folder, env=self.env, cwd=REPO)
        self.processes.append(proc)
        return proc

    def wait_http(self, proc: Process, url: str, timeout: float = 120) -> None:
        try:
            processes.wait_http(proc, url, timeout, ok=lambda status: status == 200)
        except ProcessFailed as exc:
            raise DemoFailed(f"{exc}\n(log: {proc.log_path})") from exc

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    # ------------------------------------------------------------------ the story

    def start_mlflow(self) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = self.background(
            "mlflow", str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db",
            "--artifacts-destination", str(self.folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        )  # fmt: skip
        self.wait_http(proc, f"{url}/health")
        self.env["MLFLOW_TRACKING_URI"] = url
        click.echo(f"      MLflow UI: {url}  (SQLite + {self.folder / 'artifacts'})")
        return url

    def train(self, *params: str) -> int:
        cmd = [str(BIN / "mlflow"), "run", str(REPO), "-e", "train", "--env-manager", "local",
               "-P", f"data={self.data}"]  # fmt: skip
        if self.data == "synthetic":  # a file's rows are all trained on
            cmd += ["-P", f"n_rows={self.n_rows}"]
        for p in params:
            cmd += ["-P", p]
        done = self.run(*cmd)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("registered ")), "")
        for ln in done.stdout.splitlines():
            if ln.startswith(("registered ", "  roc_auc", "  gate:")):
                click.echo(f"      {ln.strip()}")
        try:
            return int(line.split(" version ")[1].split()[0])
        except (IndexError, ValueError) as exc:
            raise DemoFailed(f"training printed no version:\n{done.stdout[-800:]}") from exc

    def registry(self):
        from churn_platform import promotion, registry
        from churn_platform.settings import settings_from

        settings = settings_from(self.env)  # as the demo's children see them, not the caller's
        return promotion, registry.connect(settings), settings

    def promote(self, version: int, reason: str) -> None:
        from churn_platform.errors import GateRefused

        promotion, client, settings = self.registry()
        try:
            result = promotion.promote(client, "churn", version, reason=reason, actor="demo",
                                       tolerance=settings.promotion_tolerance)  # fmt: skip
            verdict = f"passed: {result.gate.reason}" if result.gate and result.gate.checked else "nothing to compare"
        except GateRefused as exc:
            click.secho(f"      gate: {exc}", fg="yellow")
            result = promotion.promote(client, "churn", version, reason=reason + " (forced by the demo)",
                                       actor="demo", force=True, tolerance=settings.promotion_tolerance)  # fmt: skip
            verdict = "refused, promoted with --force to show the rest of the story"
        click.echo(f"      promotion gate: {verdict}")
        click.echo(f"      {result.message}")

    def customers(self, drift: bool, seed: int) -> pd.DataFrame:
        """Customers with what they will do (``churn``): the API sees the features only."""

        if not drift and self.data != "synthetic":
            frame = data.load(self.data).drop_duplicates("customer_id")
            return frame.sample(min(self.traffic, len(frame)), random_state=seed)
        return data.generate(self.traffic, seed=seed, drift=drift)

    def outcomes(self, customers: pd.DataFrame) -> Path:
        """What the customers did, with a concept change: month-to-month customers now do the
        opposite of what they used to (same features, different behaviour)."""
        segment = customers["contract"] == "Month-to-month"
        churned = customers["churn"].astype(bool) ^ segment
        path = self.folder / "outcomes.csv"
        observed = datetime.now(UTC).isoformat(timespec="seconds")  # dated: the file is safe to ingest again
        pd.DataFrame({"customer_id": customers["customer_id"], "churned": churned, "observed_at": observed}).to_csv(
            path, index=False
        )
        click.echo(f"      {len(customers)} outcomes, {int(segment.sum())} of them in the changed segment "
                   "(month-to-month contracts: behaviour reversed)")  # fmt: skip
        return path

    def retrain(self, api: str, served: pd.DataFrame) -> dict[str, Any]:
        """One degraded performance run is the trigger here (a schedule would wait for two)."""
        done = self.run(
            str(BIN / "churn-platform"), "retrain", "--if", "performance", "--of", "1", "--at-least", "1",
            "--rollout", "shadow", "--json", verdicts=(ExitCode.OK, ExitCode.REFUSED),  # 1: not possible, a verdict
        )  # fmt: skip
        if done.returncode != ExitCode.OK:
            click.secho(f"      {done.stderr.strip().splitlines()[-1]}", fg="yellow")  # "not retrained: why"
            return {"version": None}
        result = json.loads(done.stdout[done.stdout.index("{") :])
        gate = result["gate"]
        trained_on = result["recent_rows"] - result["gate_rows"]
        both = gate["candidate_roc_auc"] is not None and gate["production_roc_auc"] is not None
        figures = (f": ROC AUC {gate['candidate_roc_auc']:.3f} vs Production v{result['production_version']} "
                   f"{gate['production_roc_auc']:.3f}") if both else ""  # none when the gate drew no verdict
        click.echo(f"      v{result['version']} trained on {trained_on} recent customers; gated on "
                   f"{result['gate_rows']} held-out recent ones{figures}")  # fmt: skip
        if not result["challenger"]:
            click.secho(f"      the gate kept it out: {gate['reason']}", fg="yellow")
            return result
        reload = httpx.post(f"{api}/admin/reload?wait=true", headers={"X-API-Key": ADMIN_KEY}, timeout=120).json()
        if not reload["rollout"].startswith("shadow: serving"):
            raise DemoFailed(f"the API does not shadow v{result['version']}: {reload['rollout']}")
        self.send(api, data.to_records(served.drop(columns=["churn"]).head(300)), "shadow")
        time.sleep(1.2)
        status = self.run(str(BIN / "churn-platform"), "rollout", "status")
        for line in status.stdout.strip().splitlines():
            click.echo(f"      {line}")
        return result

    def performance(self, since: datetime) -> dict[str, Any]:
        out = self.folder / "reports" / "performance"
        done = self.run(
            str(BIN / "churn-platform"), "performance", "--since", since.strftime("%Y-%m-%dT%H:%M:%S"),
            "--output-dir", str(out), verdicts=(ExitCode.OK, ExitCode.REFUSED),  # 1: degraded, a verdict
        )  # fmt: skip
        summary = json.loads((out / "summary.json").read_text())
        real, est = summary["realized"]["roc_auc"], summary["estimated"]["roc_auc"]
        color = "red" if summary["degraded"] else "green"
        click.secho(f"      performance: {summary['verdict'].upper()} (exit {done.returncode}): ROC AUC realized "
                    f"{real:.3f}, estimated {est:.3f}, baseline {summary['baseline']['roc_auc']:.3f} "
                    f"on {summary['rows_matched']} outcomes", fg=color)  # fmt: skip
        click.echo(f"      report: {out / 'report.html'}")
        return summary

    def by_id(self, api: str, served: pd.DataFrame) -> dict[str, Any]:
        """Snapshot the served customers into the feature store, materialize, and score them by
        id: the same answers as with their features in the body."""
        snapshot = self.folder / "customers_snapshot.csv"
        served.drop(columns=["churn"]).to_csv(snapshot, index=False)
        # apply, ingest and materialize in one process, as the scheduled job runs them (three
        # processes took 15 s more: each imports Feast).
        done = self.run(str(BIN / "churn-platform"), "features", "refresh", str(snapshot),
                        "--as-of", f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}")  # fmt: skip
        click.echo("      churn-platform features refresh:")
        for line in done.stdout.strip().splitlines():
            click.echo(f"        {line}")
        ids = served["customer_id"].head(200).tolist()
        deadline = time.monotonic() + 90  # the API opens the store it now finds (Feast takes seconds to import)
        while (first := httpx.get(f"{api}/predict/{ids[0]}", timeout=30)).status_code == 503:
            if time.monotonic() > deadline:
                raise DemoFailed(f"the API did not open the feature store: {first.json()['message']}")
            time.sleep(1)
        body = httpx.post(f"{api}/predict/by-id", json={"customer_ids": [*ids, "no-such-customer"]}, timeout=60)
        if body.status_code != 200:
            raise DemoFailed(f"/predict/by-id answered {body.status_code}: {body.text[:300]}")
        scored = body.json()
        records = data.to_records(served.drop(columns=["churn"]).head(200))
        direct = httpx.post(f"{api}/predict", json={"customers": records}, timeout=60).json()["predictions"]
        pairs = zip(scored["predictions"], direct, strict=True)
        difference = max(abs(a[PROBABILITY] - b[PROBABILITY]) for a, b in pairs)
        click.echo(f"      GET /predict/{ids[0]}: churn {first.json()[PROBABILITY]:.2f}, risk {first.json()['risk']}")
        click.echo(f"      POST /predict/by-id: {len(scored['predictions'])} scored, {len(scored['errors'])} unknown "
                   f"({scored['errors'][0]['customer_id']})")  # fmt: skip
        click.echo(f"      max |by id - with the features sent| = {difference:.1e}")
        return {"scored": len(scored["predictions"]), "unknown": len(scored["errors"]), "max_difference": difference}

    def send(self, api: str, rows: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        batch = 100
        with httpx.Client(base_url=api, timeout=30) as client:
            for i in range(0, len(rows), batch):
                r = client.post("/predict", json={"customers": rows[i : i + batch]})
                if r.status_code != 200:
                    raise DemoFailed(f"/predict answered {r.status_code}: {r.text[:300]}")
                out += r.json()["predictions"]
                done = min(i + batch, len(rows))
                bar = "#" * int(30 * done / len(rows))
                click.echo(f"\r      {label:<8} [{bar:<30}] {done}/{len(rows)} customers", nl=False)
        click.echo()
        return out

    def monitor(self, since: datetime, until: datetime, name: str) -> dict[str, Any]:
        out = self.folder / "reports" / name
        done = self.run(
            str(BIN / "churn-platform"), "monitor", "--since", since.strftime("%Y-%m-%dT%H:%M:%S"),
            "--until", until.strftime("%Y-%m-%dT%H:%M:%S"), "--output-dir", str(out),
            verdicts=(ExitCode.OK, ExitCode.REFUSED),  # 1: drift, a verdict
        )  # fmt: skip
        summary = json.loads((out / "summary.json").read_text())
        verdict = summary["verdict"].replace("_", " ").upper()
        color = "red" if summary["verdict"] != "no_drift" else "green"
        click.secho(f"      {name} traffic: {verdict} (exit {done.returncode}), {summary['current_rows']} rows, "
                    f"drifted columns: {', '.join(summary['drifted_columns']) or 'none'}", fg=color)  # fmt: skip
        click.echo(f"      report: {out / 'report.html'}")
        return summary

    def play(self) -> dict[str, Any]:
        with self.step("Start MLflow on the embedded default (SQLite + local artifacts)"):
            ui = self.start_mlflow()
        with self.step(f"Train version 1 (logistic regression, data: {self.data}) and promote it"):
            v1 = self.train("model_type=logistic")
            self.promote(v1, "first model")
        with self.step("Train version 2 (gradient boosting) and show the promotion gate"):
            v2 = self.train("model_type=hist_gradient_boosting", "learning_rate=0.05", "max_iter=150")
            self.promote(v2, "boosted trees")
        with self.step("Start the API and send normal, then drifted traffic"):
            port = free_port()
            api = f"http://127.0.0.1:{port}"
            self.env.update(CHURN_ADMIN_API_KEY=ADMIN_KEY, CHURN_INFERENCE_LOG_URL=f"sqlite:///{self.folder}/inference_log.db",
                            CHURN_INFERENCE_LOG_SPOOL_DIR=str(self.folder / "spool"),
                            CHURN_INFERENCE_LOG_FLUSH_S="0.2",
                            CHURN_FEATURE_STORE_DIR=str(self.folder / "feature_store"))  # fmt: skip
            proc = self.background("api", str(BIN / "churn-platform"), "serve", "--port", str(port))
            self.wait_http(proc, f"{api}/ready")
            t0 = datetime.now(UTC)
            served = self.customers(drift=False, seed=1)
            normal = self.send(api, data.to_records(served.drop(columns=["churn"])), "normal")
            time.sleep(1.2)
            t1 = datetime.now(UTC)
            self.send(api, data.to_records(self.customers(drift=True, seed=2).drop(columns=["churn"])), "drifted")
            time.sleep(1.2)
            t2 = datetime.now(UTC)
            for p in normal[:4]:
                who = p["customer_id"] or "-"
                score = p[PROBABILITY]
                click.echo(f"      {who:<12} churn {score:.2f}  risk {p['risk']:<6} model v{p['model_version']}")
        with self.step("Score the same customers by id, their features from the feature store (Feast)"):
            by_id = self.by_id(api, served)
        with self.step("Monitor each window for drift (Evidently)"):
            quiet = self.monitor(t0, t1, "normal")
            loud = self.monitor(t1, t2, "drifted")
        with self.step("Outcomes arrive with a concept change: drift stays quiet, performance does not"):
            self.run(str(BIN / "churn-platform"), "outcomes", "ingest", str(self.outcomes(served)))
            click.echo(f"      drift on the same customers was: {quiet['verdict'].replace('_', ' ')}")
            judged = self.performance(t0)
        with self.step("Retrain on the recent outcomes and shadow the new Challenger"):
            retrained = self.retrain(api, served)
        with self.step("Roll back and reload the API"):
            promotion, client, _ = self.registry()
            result = promotion.rollback(client, "churn", reason="demo: drift alarm", actor="demo")
            click.echo(f"      {result.message}")
            r = httpx.post(f"{api}/admin/reload?wait=true", headers={"X-API-Key": ADMIN_KEY}, timeout=120)
            serving = httpx.get(f"{api}/model").json()["version"]
            click.echo(f"      reload: {r.json()['message']}; the API now serves v{serving}")
            if serving != result.to_version:
                raise DemoFailed(f"the API serves v{serving}, expected v{result.to_version}")
        with self.step("Summary"):
            # Each on its own validation rows, where the retrain's gate compared two on the same
            # held-out recent customers: a version's ROC AUC read 0.715 there and 0.853 here.
            click.echo("      each version's metrics on its own validation rows:")
            versions = promotion.versions(client, "churn")
            for v in versions:
                metrics = " ".join(f"{k}={x:.3f}" for k, x in v.metrics.items())
                click.echo(f"      v{v.version}  {','.join(v.aliases) or '-':<22} {metrics}")
            self.summary = {
                "versions": [v.model_dump(mode="json") for v in versions],
                "production": serving,
                "mlflow_ui": ui,
                "api_docs": f"{api}/docs",
                "monitor": {
                    "normal": quiet["verdict"],
                    "drifted": loud["verdict"],
                    "drifted_columns": loud["drifted_columns"],
                },  # fmt: skip
                "retrain": {"version": retrained["version"], "challenger": retrained.get("challenger"),
                            "gate": retrained.get("gate"), "rollout": retrained.get("rollout")},
                "performance": {"verdict": judged["verdict"], "reasons": judged["reasons"],
                                "realized_roc_auc": judged["realized"]["roc_auc"],
                                "estimated_roc_auc": judged["estimated"]["roc_auc"]},  # fmt: skip
                "by_id": by_id,
                "report": str(self.folder / "reports" / "drifted" / "report.html"),
                "seconds": round(time.perf_counter() - self.started, 1),
            }
            (self.folder / "summary.json").write_text(json.dumps(self.summary, indent=2, default=str))
            click.echo(f"      in Production: v{serving}")
            # The servers stop when the demo ends unless kept: a link to nothing would read as a fault.
            stopped = "" if self.keep_running else "  (stopped at the end: --keep-running keeps it)"
            click.echo(f"      MLflow UI:     {ui}   (models, runs, the churn-monitoring experiment){stopped}")
            click.echo(f"      API docs:      {api}/docs{stopped}")
            click.echo(f"      drift report:  {self.summary['report']}")
            click.echo(f"      performance:   {self.folder / 'reports' / 'performance' / 'report.html'}")
            if not self.keep_running:  # its artifacts are read through a server: the database alone loads no model
                click.echo(f"      to look again: mlflow server --backend-store-uri sqlite:///{self.folder}/mlflow.db "
                           f"--artifacts-destination {self.folder / 'artifacts'} --port 5000, then "
                           "MLFLOW_TRACKING_URI=http://127.0.0.1:5000 churn-platform status")  # fmt: skip
        click.secho(f"\nDemo finished in {self.summary['seconds']:.0f}s.", bold=True)
        return self.summary


def _fresh_folder(folder: Path, data: str) -> None:
    """Empty ``folder`` for a new run, refusing to wipe what the demo did not make."""
    if folder.exists():
        if not folder.is_dir():
            raise DataSourceError(f"--folder {folder}: is a file; give a folder")
        # Only the marker says the demo made it: an mlflow.db beside an artifacts/ folder is also
        # what many MLflow projects of one's own look like.
        if any(folder.iterdir()) and not (folder / MARKER).exists():
            raise DataSourceError(f"--folder {folder}: holds files the demo did not make (no {MARKER} in it), and "
                                  "the demo wipes its folder first; give a new or empty folder (a demo folder of an "
                                  "earlier release has no marker: delete it yourself)")  # fmt: skip
        if data != "synthetic" and Path(data).is_relative_to(folder.resolve()):
            raise DataSourceError(f"--data {data} is inside --folder {folder}, which the demo wipes first")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by `churn-platform demo`; the next demo run wipes this folder\n")


def _own_environment() -> dict[str, str]:
    """This process's environment without what would point the demo at real services.

    A shell set up for production (a feature store URL, an alert webhook, a Pushgateway, a
    tracing endpoint, MLflow credentials) would otherwise get synthetic customers written into
    its store and the demo's deliberately degraded verdicts paged to its team. Nor does the
    ``MLFLOW_CONFIGURE_LOGGING=false`` JSON logging sets reach the demo's ``mlflow server``,
    which would then print none of its lines."""
    leaks = ("CHURN_", "OTEL_", "MLFLOW_TRACKING_", "MLFLOW_REGISTRY_", "MLFLOW_S3_", "MLFLOW_RUN_ID",
             "MLFLOW_EXPERIMENT_", "MLFLOW_CONFIGURE_LOGGING")  # fmt: skip
    return {key: value for key, value in os.environ.items() if not key.startswith(leaks)}


def run_demo(folder: Path, data: str, n_rows: int, traffic: int, keep_running: bool,
             echo: Callable[[str], None] = click.echo) -> dict[str, Any]:  # fmt: skip
    """Play the demo in ``folder`` (wiped first); return its summary."""
    if data != "synthetic":
        if not Path(data).is_file():
            raise DataSourceError(f"--data {data}: file not found")
        data = str(Path(data).resolve())  # `mlflow run` runs in the repository, not here
    _fresh_folder(folder, data)
    env = _own_environment()
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", CHURN_REGISTRY_MAX_RETRIES="1",
               MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", CHURN_ACTOR="demo",
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", CHURN_MODEL_NAME="churn")  # fmt: skip
    from churn_platform.settings import Settings
    from churn_platform.training_config import TrainConfig

    # A shorter --traffic, or fewer synthetic customers to train on (the drift reference), still
    # gets its verdicts: the demo's windows are seeded, so a small one says the same every time
    # (a real window, or reference, that small would not be judged). The retrain learns from
    # the traffic's outcomes less the gate's quarter: half the traffic is under that.
    least = min(traffic // 2, Settings.model_fields["monitor_min_rows"].default)
    if data == "synthetic":
        least = min(least, int(n_rows * (1 - TrainConfig.validation_size)))
    env["CHURN_MONITOR_MIN_ROWS"] = str(least)
    demo = Demo(folder=folder.resolve(), data=data, n_rows=n_rows, traffic=traffic, keep_running=keep_running, env=env)

    received = [int(signal.SIGINT)]

    def interrupted(signum: int, frame: Any) -> None:
        received[0] = signum
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        summary = demo.play()
    except KeyboardInterrupt:
        demo.keep_running = False
        click.echo("error: interrupted; stopping every process the demo started", err=True)
        raise SystemExit(128 + received[0]) from None  # 130 (Ctrl-C) or 143 (SIGTERM), as every command: not a verdict
    finally:
        signal.signal(signal.SIGTERM, previous)
        if demo.keep_running and demo.summary:
            pids = " ".join(str(p.pid) for p in demo.processes)
            echo(f"\n--keep-running: MLflow and the API stay up (stop them with: kill {pids})")
        else:
            demo.stop_all()
    return summary
