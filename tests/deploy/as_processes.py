"""The compose services and the Kubernetes containers of this repository, run as local processes.

There is no Docker engine or cluster here (nor in CI), so a container is run as what its runtime
would exec, on this machine:

* **argv**: the image ENTRYPOINT (deploy/Dockerfile) with the compose service's `command`, or the
  ARGS of `docker compose run SERVICE ARGS` (which replace it), or a Kubernetes container's
  `command`/`args` by the kubelet's rules (`command` replaces the ENTRYPOINT, `args` the CMD;
  `$(VAR)` expanded). The entrypoint path is the repository file the Dockerfile copies there, run
  with its shebang's interpreter.
* **environment**: the image ENV, then `env_file` and `environment` (interpolated as compose does
  from a `.env` copied from `.env.example`), or the kubelet's: `envFrom` then `env` (ConfigMap
  values and base64-decoded Secret values; a missing object or key refuses the pod), the service
  link variables of the namespace's Services, `$(VAR)` in values expanded.
* **file system**: the service's `volumes` / the pod's `volumeMounts` mapped to local folders (a
  read-only bind mount is the repository's own folder; a writable one, a named volume, an emptyDir
  or a claim gets a folder of its own, so the checkout is never written); the WORKDIR and the rest
  of the container's own file system map to a folder per container. Paths in arguments and
  variable values are rewritten accordingly; PATH puts this virtual environment's bin first, where
  the image has its own.
* **network**: the DNS names of a compose service or a Kubernetes Service (`mlflow`,
  `mlflow.ml-production.svc.cluster.local`, ...), a port compose publishes or a documented
  `kubectl port-forward` (`localhost:5000`) are rewritten, in every URL of an argument or a
  variable, to the local process or stand-in behind them: the machine's PostgreSQL for a
  `postgres` image (a fresh database for each one the image creates, owned by its POSTGRES_USER
  role, created here), `moto_server` for a `minio/minio` image (buckets made as the `mc mb` job
  makes them), and the app containers themselves, each on a free port (the entrypoint's port
  variable is moved there, as a port mapping would).

Not modelled: a read-only root file system (its folder here is writable; tests/deploy/policies.py
checks the writable paths), users and capabilities, resource limits, probes beyond the first HTTP
one. One liberty is taken: the MLflow server runs one worker, not its default four (LOCAL_ARGS).

What the runtime or a datastore would refuse (a required compose variable unset, a Secret key
that does not exist, a password PostgreSQL or MinIO would not accept) raises ``Refused`` before
anything starts. A step that fails raises AssertionError naming the step, its argv and the end of
its output.
"""

from __future__ import annotations

import base64
import functools
import io
import itertools
import json
import posixpath
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from churn_platform import processes
from churn_platform.processes import Process
from tests.deploy.policies import WORKLOADS, expand, pod_spec, selects
from tests.services import (
    BIN,
    PG_HOST,
    PG_PORT,
    PG_USER,
    REPO,
    ServiceError,
    free_port,
    postgres_database,
    start_moto,
    wait_http,
    wait_ready,
)

DOCKERFILE = REPO / "deploy" / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
DOTENV_EXAMPLE = REPO / ".env.example"
DEPLOY_DOCS = REPO / "docs" / "deploy.md"
BASE_KUSTOMIZATION = REPO / "deploy" / "base" / "kustomization.yaml"
CUSTOMERS = REPO / "data" / "telco_churn.csv"

#: PATH of the base image (python:3.11-slim) before the Dockerfile's ENV extends it.
BASE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Folders an image shares with this machine's OS: paths under them are left as they are.
SYSTEM_DIRS = ("bin", "sbin", "usr", "lib", "lib64", "etc", "dev", "proc", "sys")
#: Images that are not run but stood in for, by repository: what stands in, and its port.
STAND_INS = {"postgres": ("postgres", 5432), "minio/minio": ("s3", 9000), "minio/mc": ("mc", None)}
#: Arguments added here to a role, beyond the files: the image's MLflow server forks two
#: workers, seconds of two busy cores to start; one serves these tests.
LOCAL_ARGS = {"mlflow-server": ("--workers", "1")}


class Refused(AssertionError):
    """What compose, the kubelet or a datastore would refuse, before or as the container starts."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60]


def repository(image: str) -> str:
    """An image reference without its tag or digest (and without docker.io/library/)."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    name = f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]
    return name.removeprefix("docker.io/").removeprefix("library/")


# --------------------------------------------------------------------------- the image


_DOCKER_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Image:
    """The final stage of a Dockerfile, as the runtime sees the built image."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    workdir: str
    env: dict[str, str]
    #: Container path -> the repository file a single-file COPY puts there (the entrypoint).
    files: dict[str, Path]
    #: The HTTP path the HEALTHCHECK asks, if any.
    health_path: str | None

    @classmethod
    def read(cls, dockerfile: Path = DOCKERFILE, context: Path = REPO) -> Image:
        """The final stage of `dockerfile`, built from `context` (COPY sources are relative to it)."""
        return _read_image(dockerfile.resolve(), context.resolve())

    @classmethod
    def _parse(cls, dockerfile: Path, context: Path) -> Image:
        text = dockerfile.read_text()
        stage = re.sub(r"\\\n\s*", " ", text[text.rindex("\nFROM ") :])  # join continuation lines
        lines = [line.strip() for line in stage.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        env: dict[str, str] = {}
        entrypoint: list[str] = []
        cmd: list[str] = []
        files: dict[str, Path] = {}
        workdir, health = "/", None
        for line in lines:
            word, _, rest = line.partition(" ")
            before = {"PATH": BASE_PATH, **env}  # one ENV instruction substitutes the values before it

            def substitute(value: str, before: dict[str, str] = before) -> str:
                return _DOCKER_VARIABLE.sub(lambda m: before.get(m[1] or m[2], ""), value)

            if word == "ENV":
                for item in shlex.split(rest):
                    key, _, value = item.partition("=")
                    env[key] = substitute(value)
            elif word == "WORKDIR":
                workdir = posixpath.join(workdir, substitute(rest.strip()))
            elif word == "ENTRYPOINT":
                entrypoint = json.loads(rest)
            elif word == "CMD":
                cmd = json.loads(rest)
            elif word == "COPY" and "--from=" not in rest:
                paths = [p for p in shlex.split(rest) if not p.startswith("--")]
                if len(paths) == 2 and (context / paths[0]).is_file():
                    files[paths[1]] = context / paths[0]
            elif word == "HEALTHCHECK":
                found = re.search(r"http://(?:127\.0\.0\.1|localhost)[^/]*(/[\w/.-]*)", rest)
                health = found[1] if found else None
        if not entrypoint:
            raise Refused(f"{dockerfile}: no ENTRYPOINT in the final stage")
        return cls(tuple(entrypoint), tuple(cmd), workdir, env, files, health)

    @property
    def venv_bin(self) -> str:
        """The image's own virtual environment: the first folder its PATH puts before the base image's."""
        return self.env.get("PATH", BASE_PATH).split(":")[0]

    @property
    def script(self) -> Path:
        """The repository file the ENTRYPOINT runs."""
        if self.entrypoint[0] not in self.files:
            raise Refused(f"no COPY puts a repository file at the ENTRYPOINT {self.entrypoint[0]}")
        return self.files[self.entrypoint[0]]

    def roles(self) -> tuple[str, ...]:
        """The roles the entrypoint takes as its first argument (its `roles="a | b"` list)."""
        found = re.search(r'^roles="([^"]+)"', self.script.read_text(), re.M)
        if not found:
            raise Refused(f'{self.script}: no roles="..." list')
        return tuple(r.strip() for r in found[1].split("|"))

    def port_variables(self) -> dict[int, str]:
        """Container port -> the variable the entrypoint takes it from (`--port "${VAR:-5000}"`)."""
        found = re.findall(r'--port "\$\{(\w+):-(\d+)\}"', self.script.read_text())
        return {int(default): name for name, default in found}


@functools.cache
def _read_image(dockerfile: Path, context: Path) -> Image:
    return Image._parse(dockerfile, context)


def exec_argv(argv: list[str], image: Image | None) -> list[str]:
    """The argv to exec here: a script the image copies from the repository is run with its interpreter."""
    if image is not None and argv and argv[0] in image.files:
        script = image.files[argv[0]]
        shebang = script.read_text().splitlines()[0]
        if not shebang.startswith("#!"):
            raise Refused(f"{script}: the ENTRYPOINT script has no #! line")
        return [*shebang[2:].split(), str(script), *argv[1:]]
    return list(argv)


# --------------------------------------------------------------------------- what to run


@dataclass(frozen=True)
class Mount:
    #: "bind" (source: a host path, relative to the project folder), "volume", "emptyDir" or
    #: "claim" (source: its name).
    kind: str
    source: str
    read_only: bool = False


@dataclass
class Container:
    """A container as its runtime would start it, still in the container's terms."""

    name: str
    image: str
    argv: list[str]
    env: dict[str, str]
    workdir: str
    mounts: dict[str, Mount] = field(default_factory=dict)
    #: "host:port" as a client writes it -> the container port behind it.
    names: dict[str, int] = field(default_factory=dict)
    health_path: str | None = None
    #: The built image, when it is ours (None: a stand-in's).
    built: Image | None = None

    @property
    def role(self) -> str | None:
        """The entrypoint's role: the first argument when it names one, else CHURN_ROLE (default api)."""
        if self.built is None or tuple(self.argv[: len(self.built.entrypoint)]) != self.built.entrypoint:
            return None
        args = self.argv[len(self.built.entrypoint) :]
        if args and args[0] == "--":
            args = args[1:]
        if args and args[0] in self.built.roles():
            return args[0]
        if not args or args[0].startswith("-"):
            return self.env.get("CHURN_ROLE") or "api"
        return None  # another command

    def option(self, flag: str) -> str | None:
        """The value after `flag` in the argv (or of `flag=value`)."""
        for i, arg in enumerate(self.argv):
            if arg == flag and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith(f"{flag}="):
                return arg.split("=", 1)[1]
        return None


# --------------------------------------------------------------------------- docker compose

_INTERPOLATION = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|(\w+))")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (a .env or an env_file): comments, blank lines and quotes as compose reads them."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise Refused(f"{path}:{number}: not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.sub(r"\s+#.*$", "", value)
        values[key.strip()] = value
    return values


class Compose:
    """docker-compose.yml as `docker compose` reads it, with a .env copied from .env.example."""

    def __init__(self, file: Path = COMPOSE, dotenv: Path = DOTENV_EXAMPLE, project_dir: Path = REPO) -> None:
        self.file, self.project_dir = file, project_dir
        self.variables = read_env_file(dotenv)
        #: What compose would warn about (a variable used without a default and not set).
        self.warnings: list[str] = []
        # Compose interpolates the whole file before anything else: a `${X:?}` anywhere fails every command.
        self.model = self._interpolate(yaml.safe_load(file.read_text()), "")
        self.services: dict[str, dict[str, Any]] = self.model["services"]

    def _interpolate(self, node: Any, where: str) -> Any:
        if isinstance(node, dict):
            return {key: self._interpolate(value, f"{where}.{key}".strip(".")) for key, value in node.items()}
        if isinstance(node, list):
            return [self._interpolate(value, f"{where}[{i}]") for i, value in enumerate(node)]
        if isinstance(node, str):
            return self.interpolate(node, where)
        return node

    def interpolate(self, text: str, where: str) -> str:
        def one(m: re.Match[str]) -> str:
            if m[0] == "$$":
                return "$"
            name, op, arg = m[1] or m[4], m[2] or "", m[3] or ""
            value = self.variables.get(name)
            missing = not value if op.startswith(":") else value is None
            if op.endswith("-"):
                return self.interpolate(arg, where) if missing else value
            if op.endswith("?"):
                if missing:
                    raise Refused(
                        f"docker compose refuses {self.file.name}: {where}: required variable {name} is missing "
                        f"a value: {self.interpolate(arg, where)}"
                    )
                return value
            if op.endswith("+"):
                return "" if missing else self.interpolate(arg, where)
            if value is None:
                self.warnings.append(f"{where}: the {name} variable is not set, defaulting to a blank string")
            return value or ""

        return _INTERPOLATION.sub(one, text)

    def service(self, name: str) -> dict[str, Any]:
        if name not in self.services:
            raise Refused(f"{self.file.name}: no service {name!r} (services: {', '.join(self.services)})")
        return self.services[name]

    def built_image(self, name: str) -> Image | None:
        """The image the service builds from a Dockerfile of this repository, else None."""
        build = self.service(name).get("build")
        if build is None:
            return None
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        return Image.read(self.project_dir / context / dockerfile, self.project_dir / context)

    def app_services(self) -> list[str]:
        return [name for name in self.services if self.built_image(name) is not None]

    def up_services(self) -> list[str]:
        """What `docker compose up` starts: the services without a profile, dependencies first."""
        order: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in order:
                return
            if name in path:
                raise Refused(f"depends_on cycle: {' -> '.join((*path, name))}")
            for dependency in _depends_on(self.service(name)):
                visit(dependency, (*path, name))
            order.append(name)

        for name, service in self.services.items():
            if not service.get("profiles"):
                visit(name, ())
        return order

    def container(self, name: str, run_args: list[str] | None = None, run_env: Mapping[str, str] = {}) -> Container:
        """The service as `docker compose up` (run_args None) or `docker compose run NAME *run_args` starts it."""
        service = self.service(name)
        image = self.built_image(name)
        entrypoint = service.get("entrypoint", list(image.entrypoint) if image else [])
        entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
        if run_args:  # `run` replaces the command, never the entrypoint
            command = list(run_args)
        elif "command" in service:
            command = service["command"]
        else:  # an entrypoint set in compose drops the image CMD
            command = [] if "entrypoint" in service or image is None else list(image.cmd)
        command = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
        env = dict(image.env) if image else {}
        for item in service.get("env_file", []):
            path, required = (item, True) if isinstance(item, str) else (item["path"], item.get("required", True))
            if (self.project_dir / path).is_file():
                env.update(read_env_file(self.project_dir / path))
            elif required:
                raise Refused(f"docker compose refuses service {name!r}: env file {path} not found")
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) if "=" in item else (item, None) for item in environment)
        for key, value in environment.items():
            if value is not None:  # a bare KEY takes the shell's value: a clean shell has none
                env[key] = str(value).lower() if isinstance(value, bool) else str(value)
        env.update(run_env)
        names: dict[str, int] = {}
        kind, port = STAND_INS.get(repository(service.get("image", "")), (None, None))
        container_ports = {port} if port else set()
        for published, target in self._ports(service):
            container_ports.add(target)
            if published is not None:
                names[f"localhost:{published}"] = names[f"127.0.0.1:{published}"] = target
        for target in container_ports:
            names[f"{name}:{target}"] = target
        if kind is not None:  # a stand-in answers on its own port only (MinIO's console is not stood in)
            names = {host: target for host, target in names.items() if target == port}
        return Container(
            name=f"compose service {name!r}",
            image=service.get("image", ""),
            argv=[*entrypoint, *command],
            env=env,
            workdir=service.get("working_dir") or (image.workdir if image else "/"),
            mounts=self._mounts(service),
            names=names,
            health_path=self._health_path(service, image),
            built=image,
        )

    @staticmethod
    def _ports(service: dict[str, Any]) -> list[tuple[int | None, int]]:
        ports: list[tuple[int | None, int]] = []
        for item in service.get("ports", []):
            if isinstance(item, dict):
                published = item.get("published")
                ports.append((int(published) if published else None, int(item["target"])))
                continue
            parts = str(item).split("/")[0].split(":")
            ports.append((int(parts[-2]) if len(parts) > 1 else None, int(parts[-1])))
        ports += [(None, int(str(p).split("/")[0])) for p in service.get("expose", [])]
        return ports

    @staticmethod
    def _mounts(service: dict[str, Any]) -> dict[str, Mount]:
        mounts: dict[str, Mount] = {}
        for item in service.get("volumes", []):
            if isinstance(item, dict):
                kind = "bind" if item.get("type") == "bind" else "volume"
                mounts[item["target"]] = Mount(kind, item.get("source", ""), bool(item.get("read_only")))
                continue
            parts = item.split(":")
            if len(parts) == 1:  # an anonymous volume
                mounts[parts[0]] = Mount("volume", f"anonymous{parts[0]}")
                continue
            source, target, mode = parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            mounts[target] = Mount(kind, source, "ro" in mode.split(","))
        return mounts

    @staticmethod
    def _health_path(service: dict[str, Any], image: Image | None) -> str | None:
        check = service.get("healthcheck")
        if check is not None:
            if check.get("disable"):
                return None
            test = check.get("test", [])
            found = re.search(
                r"http://(?:127\.0\.0\.1|localhost)[^/]*(/[\w/.-]*)", " ".join(test) if isinstance(test, list) else test
            )
            return found[1] if found else None
        return image.health_path if image else None


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition} (the short list form means service_started)."""
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in depends.items()}


# --------------------------------------------------------------------------- the docs


@dataclass(frozen=True)
class Documented:
    """A command of a ```bash block of the docs."""

    source: Path
    line: int
    argv: list[str]

    def __str__(self) -> str:
        return f"{self.source.name}:{self.line}: {shlex.join(self.argv)}"


def documented(docs: Path, *first_words: str) -> list[Documented]:
    """The commands of the docs' shell blocks that start with `first_words` (comments dropped)."""
    found: list[Documented] = []
    fence: str | None = None
    lines = docs.read_text().splitlines()
    number = 0
    while number < len(lines):
        raw, start = lines[number], number + 1
        number += 1
        if raw.startswith("```"):
            fence = (raw[3:].strip() or "text") if fence is None else None
            continue
        if fence not in ("bash", "sh", "shell"):
            continue
        while raw.endswith("\\") and number < len(lines):
            raw, number = raw[:-1] + " " + lines[number].strip(), number + 1
        try:
            argv = shlex.split(raw, comments=True)
        except ValueError:
            continue
        if argv[: len(first_words)] == list(first_words):
            found.append(Documented(docs, start, argv))
    return found


@dataclass(frozen=True)
class ComposeRun:
    """`docker compose [global options] run [options] SERVICE [ARGS...]`."""

    service: str
    args: list[str]
    env: dict[str, str]
    source: Documented


def compose_runs(docs: Path = DEPLOY_DOCS) -> list[ComposeRun]:
    runs = []
    global_options, run_flags = (
        {"--profile", "-f", "--file", "-p", "--project-name", "--env-file"},
        {"--rm", "-T", "--no-deps", "--quiet-pull", "--no-TTY"},
    )
    for command in documented(docs, "docker", "compose"):
        argv, i = command.argv, 2
        while i < len(argv) and argv[i] in global_options:
            i += 2
        if i >= len(argv) or argv[i] != "run":
            continue
        i += 1
        env: dict[str, str] = {}
        while i < len(argv) and argv[i].startswith("-"):
            if argv[i] in ("-e", "--env"):
                key, _, value = argv[i + 1].partition("=")
                env[key] = value
                i += 2
            elif argv[i] in run_flags:
                i += 1
            else:
                raise Refused(f"{command}: option {argv[i]} is not modelled here")
        if i >= len(argv):
            raise Refused(f"{command}: no service")
        runs.append(ComposeRun(argv[i], argv[i + 1 :], env, command))
    return runs


def port_forwards(docs: Path = DEPLOY_DOCS) -> list[tuple[str, int, int]]:
    """The documented `kubectl port-forward svc/NAME LOCAL:REMOTE`: (Service, local port, Service port)."""
    forwards = []
    for command in documented(docs, "kubectl"):
        if "port-forward" not in command.argv:
            continue
        words = command.argv[command.argv.index("port-forward") + 1 :]
        target = next((w for w in words if w.startswith(("svc/", "service/", "services/"))), None)
        ports = [w for w in words if re.fullmatch(r"\d+(:\d+)?", w)]
        if target and ports:
            local, _, remote = ports[0].partition(":")
            forwards.append((target.split("/", 1)[1], int(local), int(remote or local)))
    return forwards


# --------------------------------------------------------------------------- Kubernetes


def app_image_repository(kustomization: Path = BASE_KUSTOMIZATION) -> str:
    """The repository the base kustomization gives this project's image."""
    images = yaml.safe_load(kustomization.read_text()).get("images", [])
    names = [i["newName"] for i in images if "newName" in i]
    if len(names) != 1:
        raise Refused(f"{kustomization}: expected one image with a newName, found {names}")
    return names[0]


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


class Manifests:
    """Rendered objects as the kubelet reads them to start a container."""

    def __init__(self, objs: list[dict[str, Any]], docs: Path = DEPLOY_DOCS, image: Image | None = None) -> None:
        self.objs = objs
        self.image = image or Image.read()
        self.app_image = app_image_repository()
        self.forwards = port_forwards(docs)
        workloads = [o for o in objs if o["kind"] in WORKLOADS]
        namespaces = {o["metadata"].get("namespace", "default") for o in workloads}
        if len(namespaces) != 1:
            raise Refused(f"workloads in several namespaces: {namespaces}")
        self.namespace = namespaces.pop()

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.objs if o["kind"] == kind and o["metadata"]["name"] == name), None)

    def workload(self, name: str) -> dict[str, Any]:
        """The Deployment, Job or CronJob `name` (a CronJob runs its jobTemplate's pod)."""
        found = [o for o in self.objs if o["kind"] in WORKLOADS and o["metadata"]["name"] == name]
        if len(found) != 1:
            raise Refused(f"expected one workload named {name}, found {[o['kind'] for o in found]}")
        return found[0]

    def is_app(self, spec: dict[str, Any]) -> bool:
        return repository(spec["image"]) == self.app_image

    def app_containers(self, kinds: tuple[str, ...] = WORKLOADS) -> list[Container]:
        return [
            self.container(o, spec)
            for o in self.objs
            if o["kind"] in kinds
            for spec in pod_spec(o)["containers"]
            if self.is_app(spec)
        ]

    def containers_of(self, obj: dict[str, Any]) -> list[Container]:
        return [self.container(obj, spec) for spec in pod_spec(obj)["containers"]]

    # the pod ----------------------------------------------------------------------------------

    def container(self, obj: dict[str, Any], spec: dict[str, Any]) -> Container:
        where = f"{obj['kind']}/{obj['metadata']['name']} container {spec['name']!r}"
        pod = pod_spec(obj)
        image = self.image if self.is_app(spec) else None
        declared = self._declared_env(obj, pod, spec, where)
        services = self.service_env(pod.get("enableServiceLinks", True))
        visible = {**services, **declared}
        if "command" in spec:  # replaces the ENTRYPOINT; the image CMD is dropped
            argv = [expand(a, visible) for a in [*spec["command"], *spec.get("args", [])]]
        elif "args" in spec:
            argv = [*(image.entrypoint if image else ()), *(expand(a, visible) for a in spec["args"])]
        else:
            argv = [*(image.entrypoint if image else ()), *(image.cmd if image else ())]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {}
        for mount in spec.get("volumeMounts", []):
            volume = volumes.get(mount["name"])
            if volume is None:
                raise Refused(f"{where}: volumeMount {mount['name']} has no volume")
            if "emptyDir" in volume:
                mounts[mount["mountPath"]] = Mount("emptyDir", mount["name"], bool(mount.get("readOnly")))
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                mounts[mount["mountPath"]] = Mount("claim", claim, bool(mount.get("readOnly")))
            else:
                raise Refused(f"{where}: volume {mount['name']} ({', '.join(volume)}) is not modelled here")
        probe = spec.get("startupProbe") or spec.get("readinessProbe") or spec.get("livenessProbe") or {}
        return Container(
            name=where,
            image=spec["image"],
            argv=argv,
            env={**(image.env if image else {}), **visible},  # the runtime: image ENV, then the pod's
            workdir=spec.get("workingDir") or (image.workdir if image else "/"),
            mounts=mounts,
            names=self._names(obj, spec),
            health_path=probe.get("httpGet", {}).get("path"),
            built=image,
        )

    def _data(self, kind: str, name: str, where: str, optional: bool) -> dict[str, str] | None:
        obj = self.get(kind, name)
        if obj is None:
            if optional:
                return None
            raise Refused(f"{where}: {kind.lower()} {name!r} not found (kubelet: CreateContainerConfigError)")
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
            return {**data, **(obj.get("stringData") or {})}
        return dict(obj.get("data") or {})

    def _declared_env(
        self, obj: dict[str, Any], pod: dict[str, Any], spec: dict[str, Any], where: str
    ) -> dict[str, str]:
        """envFrom, then env in order; each value's $(VAR) expanded with those before it."""
        env: dict[str, str] = {}
        services = self.service_env(pod.get("enableServiceLinks", True))
        for source in spec.get("envFrom", []):
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            ref = source.get("configMapRef") or source.get("secretRef")
            data = self._data(kind, ref["name"], where, ref.get("optional", False)) or {}
            env.update({source.get("prefix", "") + key: value for key, value in data.items()})
        for var in spec.get("env", []):
            name, source = var["name"], var.get("valueFrom")
            if source is None:
                env[name] = expand(var.get("value", ""), {**services, **env})
            elif "configMapKeyRef" in source or "secretKeyRef" in source:
                kind = "ConfigMap" if "configMapKeyRef" in source else "Secret"
                ref = source.get("configMapKeyRef") or source.get("secretKeyRef")
                data = self._data(kind, ref["name"], where, ref.get("optional", False))
                if data is None:
                    continue
                if ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise Refused(
                        f"{where}: env {name}: couldn't find key {ref['key']} in {kind} "
                        f"{self.namespace}/{ref['name']} (kubelet: CreateContainerConfigError; the pod does not start)"
                    )
                env[name] = data[ref["key"]]
            elif "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                fields = {
                    "metadata.name": f"{obj['metadata']['name']}-local",
                    "metadata.namespace": self.namespace,
                    "status.podIP": "127.0.0.1",
                    "spec.nodeName": "localhost",
                }
                if path not in fields:
                    raise Refused(f"{where}: env {name}: fieldRef {path} is not modelled here")
                env[name] = fields[path]
            else:
                raise Refused(f"{where}: env {name}: {', '.join(source)} is not modelled here")
        return env

    def service_env(self, links: bool) -> dict[str, str]:
        """The variables the kubelet adds for the API server's Service and, with enableServiceLinks
        (the default), for each Service of the namespace: NAME_SERVICE_HOST, NAME_PORT=tcp://IP:PORT, ..."""
        services = [("kubernetes", "10.96.0.1", [{"name": "https", "port": 443}])]
        if links:
            rendered = sorted((o for o in self.objs if o["kind"] == "Service"), key=lambda o: o["metadata"]["name"])
            for i, svc in enumerate(rendered, 10):
                spec = svc["spec"]
                if spec.get("clusterIP") == "None" or spec.get("type") == "ExternalName":
                    continue
                services.append((svc["metadata"]["name"], spec.get("clusterIP") or f"10.96.0.{i}", spec["ports"]))
        env: dict[str, str] = {}
        for name, ip, ports in services:
            prefix = _env_name(name)
            env[f"{prefix}_SERVICE_HOST"] = ip
            env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
            for port in ports:
                if port.get("name"):
                    env[f"{prefix}_SERVICE_PORT_{_env_name(port['name'])}"] = str(port["port"])
            for i, port in enumerate(ports):
                protocol = port.get("protocol", "TCP")
                url = f"{protocol.lower()}://{ip}:{port['port']}"
                if i == 0:
                    env[f"{prefix}_PORT"] = url
                key = f"{prefix}_PORT_{port['port']}_{protocol.upper()}"
                env.update(
                    {key: url, f"{key}_PROTO": protocol.lower(), f"{key}_PORT": str(port["port"]), f"{key}_ADDR": ip}
                )
        return env

    def _names(self, obj: dict[str, Any], spec: dict[str, Any]) -> dict[str, int]:
        """The Service DNS names (and documented port-forwards) that reach this container: name:port -> its port."""
        if obj["kind"] != "Deployment":
            return {}
        labels = obj["spec"]["template"]["metadata"].get("labels", {})
        declared = {p.get("name"): p["containerPort"] for p in spec.get("ports", [])}
        names: dict[str, int] = {}
        for svc in (o for o in self.objs if o["kind"] == "Service"):
            selector = svc["spec"].get("selector")
            if not selector or not selects({"matchLabels": selector}, labels):
                continue
            name = svc["metadata"]["name"]
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                if isinstance(target, str):
                    if target not in declared:
                        continue
                    target = declared[target]
                elif target not in declared.values():
                    continue
                for host in (
                    name,
                    f"{name}.{self.namespace}",
                    f"{name}.{self.namespace}.svc",
                    f"{name}.{self.namespace}.svc.cluster.local",
                ):
                    names[f"{host}:{port['port']}"] = target
                for forwarded, local, remote in self.forwards:
                    if forwarded == name and remote == port["port"]:
                        names[f"localhost:{local}"] = names[f"127.0.0.1:{local}"] = target
        return names


# --------------------------------------------------------------------------- stand-ins


@dataclass
class PostgresStandIn:
    """The machine's PostgreSQL in place of a `postgres` image: the databases it creates, fresh."""

    name: str
    user: str
    password: str
    #: Database name as the image creates it -> the fresh local database.
    databases: dict[str, str]
    local: str = f"{PG_HOST}:{PG_PORT}"


@dataclass
class ObjectStoreStandIn:
    """moto_server in place of MinIO; it accepts any keys, so the MinIO root credentials are checked here."""

    name: str
    url: str
    user: str
    password: str

    @property
    def local(self) -> str:
        return self.url.removeprefix("http://")

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.user,
            aws_secret_access_key=self.password,
            region_name="us-east-1",
        )


@dataclass
class Endpoint:
    local: str
    owner: str
    postgres: PostgresStandIn | None = None
    store: ObjectStoreStandIn | None = None


_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?:(?P<user>[^:@/\s]*)(?::(?P<password>[^@/\s]*))?@)?"
    r"(?P<host>[A-Za-z0-9_.-]+)(?::(?P<port>\d+))?(?P<path>/[^\s,;'\"]*)?"
)


def _default_port(scheme: str) -> int | None:
    if scheme.startswith("postgres"):
        return 5432
    return {"http": 80, "https": 443}.get(scheme)


# --------------------------------------------------------------------------- running


@dataclass
class Launch:
    """A container made local: what is exec'd, where, and where its container paths are."""

    container: Container
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    rootfs: Path
    mounts: dict[str, Path]
    ports: dict[int, int]
    process: Process | None = None

    @property
    def url(self) -> str:
        if not self.ports:
            raise Refused(f"{self.container.name} serves no port")
        return f"http://127.0.0.1:{min(self.ports.values())}"

    def path(self, container_path: str) -> Path:
        """Where a container path (absolute, or relative to its working directory) is here."""
        path = posixpath.normpath(posixpath.join(self.container.workdir, container_path))
        best = max((m for m in self.mounts if path == m or path.startswith(m.rstrip("/") + "/")), key=len, default=None)
        if best is not None:
            return self.mounts[best] / posixpath.relpath(path, best)
        return self.rootfs / path.lstrip("/")


@dataclass
class Finished:
    step: str
    launch: Launch
    code: int

    def tail(self, chars: int = 4000) -> str:
        return self.launch.process.log_tail(chars) if self.launch.process else ""

    def path(self, container_path: str) -> Path:
        return self.launch.path(container_path)


def failure(step: str, launch: Launch, problem: str, tail: str) -> str:
    return (
        f"{step}: {problem}\n  container: {launch.container.name}\n  argv as the runtime execs it: "
        f"{shlex.join(launch.container.argv)}\n  here: {shlex.join(launch.argv)}\n"
        f"  output (last lines, {launch.process.log_path if launch.process else '-'}):\n{tail}"
    )


class Stack:
    """Local processes and stand-ins for one compose project or one rendered overlay."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.endpoints: dict[str, Endpoint] = {}
        self.running: dict[str, Launch] = {}
        self._exit = ExitStack()
        self._count = itertools.count(1)
        self._once: dict[str, tuple[bool, Any]] = {}
        self._reserved: dict[str, dict[int, int]] = {}

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._exit.close()

    def once(self, step: str, run: Callable[[], Any]) -> Any:
        """Run a step the first time it is asked for; later, its result (or the same failure) again."""
        if step not in self._once:
            try:
                self._once[step] = (True, run())
            except Exception as exc:
                self._once[step] = (False, exc)
        ok, value = self._once[step]
        if not ok:
            raise value
        return value

    # stand-ins --------------------------------------------------------------------------------

    def stand_in(self, container: Container) -> None:
        kind, _ = STAND_INS.get(repository(container.image), (None, None))
        if kind == "postgres":
            self._postgres(container)
        elif kind == "s3":
            self._object_store(container)
        elif kind == "mc":
            self._bucket_job(container)
        else:
            raise Refused(f"{container.name}: no stand-in for image {container.image}")

    def _postgres(self, container: Container) -> None:
        """As the postgres image's first start: POSTGRES_USER (a superuser there; here the owner of
        the databases), POSTGRES_DB and the CREATE DATABASE of its init scripts."""
        import psycopg2

        env = container.env
        user = env.get("POSTGRES_USER") or "postgres"
        password = env.get("POSTGRES_PASSWORD", "")
        if not password and env.get("POSTGRES_HOST_AUTH_METHOD") != "trust":
            raise Refused(f"{container.name}: the postgres image does not start without POSTGRES_PASSWORD")
        names = [env.get("POSTGRES_DB") or user]
        for path, mount in container.mounts.items():
            if path.startswith("/docker-entrypoint-initdb.d") and mount.kind == "bind":
                source = REPO / mount.source
                for script in sorted(source.glob("*.sql")) if source.is_dir() else [source]:
                    names += re.findall(r'CREATE\s+DATABASE\s+"?(\w+)"?', script.read_text(), re.I)
        try:
            admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5)
        except psycopg2.OperationalError as exc:
            raise ServiceError(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}: {exc}") from exc
        admin.autocommit = True
        self._exit.callback(admin.close)
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE ROLE "{user}" LOGIN')

                def drop_role() -> None:
                    with admin.cursor() as cur:
                        cur.execute(f'DROP ROLE IF EXISTS "{user}"')

                self._exit.callback(drop_role)  # after its databases (LIFO)
        databases = {}
        for name in names:
            url = self._exit.enter_context(postgres_database())
            fresh = url.rsplit("/", 1)[1]
            with admin.cursor() as cur:
                cur.execute(f'ALTER DATABASE "{fresh}" OWNER TO "{user}"')
            databases[name] = fresh
        stand_in = PostgresStandIn(container.name, user, password, databases)
        for host in container.names:
            self.endpoints[host] = Endpoint(stand_in.local, container.name, postgres=stand_in)

    def _object_store(self, container: Container) -> None:
        proc, url = start_moto(self.logs)
        self._exit.callback(proc.stop)
        store = ObjectStoreStandIn(
            container.name,
            url,
            container.env.get("MINIO_ROOT_USER", "minioadmin"),
            container.env.get("MINIO_ROOT_PASSWORD", "minioadmin"),
        )
        for host in container.names:
            self.endpoints[host] = Endpoint(store.local, container.name, store=store)

    def _bucket_job(self, container: Container) -> None:
        """The `mc alias set` and `mc mb` of a /bin/sh -c script, against the stood-in store."""
        argv = container.argv
        if "-c" not in argv or argv.index("-c") + 1 >= len(argv):
            raise Refused(f"{container.name}: expected a /bin/sh -c script, got {argv}")
        script = _DOCKER_VARIABLE.sub(lambda m: container.env.get(m[1] or m[2], ""), argv[argv.index("-c") + 1])
        aliases: dict[str, tuple[str, str, str]] = {}
        for command in re.split(r"&&|;", script):
            words = shlex.split(command)
            if words[:3] == ["mc", "alias", "set"]:
                aliases[words[3]] = (words[4], words[5], words[6])
            elif words[:2] == ["mc", "mb"]:
                target = [w for w in words[2:] if not w.startswith("-")][0]
                alias, _, bucket = target.partition("/")
                if alias not in aliases:
                    raise Refused(f"{container.name}: mc mb {target}: no `mc alias set {alias}` before it")
                url, user, password = aliases[alias]
                endpoint = self._endpoint_of(url)
                if endpoint is None or endpoint.store is None:
                    raise Refused(f"{container.name}: {url} is no object store here")
                if (user, password) != (endpoint.store.user, endpoint.store.password):
                    raise Refused(f"{container.name}: {endpoint.owner} would refuse {user!r} (not its root user)")
                endpoint.store.client().create_bucket(Bucket=bucket)
            elif words:
                raise Refused(f"{container.name}: {command.strip()!r} is not modelled here")

    def _endpoint_of(self, url: str) -> Endpoint | None:
        m = _URL.match(url)
        if m is None:
            return None
        return self.endpoints.get(f"{m['host']}:{m['port'] or _default_port(m['scheme'])}")

    def store_of(self, container: Container) -> ObjectStoreStandIn:
        """The object store the container's MLFLOW_S3_ENDPOINT_URL names."""
        endpoint = self._endpoint_of(container.env.get("MLFLOW_S3_ENDPOINT_URL", ""))
        if endpoint is None or endpoint.store is None:
            raise Refused(f"{container.name}: MLFLOW_S3_ENDPOINT_URL names no object store here")
        return endpoint.store

    # making a container local ------------------------------------------------------------------

    def rewrite_urls(self, value: str, where: str) -> str:
        def one(m: re.Match[str]) -> str:
            endpoint = self.endpoints.get(f"{m['host']}:{m['port'] or _default_port(m['scheme'])}")
            if endpoint is None:
                return m[0]
            path, userinfo = m["path"] or "", ""
            if m["user"] is not None:
                userinfo = m["user"] + (f":{m['password']}" if m["password"] is not None else "") + "@"
            pg = endpoint.postgres
            if pg is not None:
                if (m["user"], m["password"]) != (pg.user, pg.password):
                    same = "right" if m["password"] == pg.password else "wrong"
                    raise Refused(
                        f"{where}: {pg.name} would refuse user {m['user']!r} with the {same} password "
                        f"(its POSTGRES_USER is {pg.user!r})"
                    )
                database, _, query = path.lstrip("/").partition("?")
                if database not in pg.databases:
                    raise Refused(
                        f"{where}: {pg.name} has no database {database!r} (it creates {sorted(pg.databases)})"
                    )
                path = f"/{pg.databases[database]}" + (f"?{query}" if query else "")
            return f"{m['scheme']}://{userinfo}{endpoint.local}{path}"

        return _URL.sub(one, value)

    def localize(self, container: Container, publish: bool = True) -> Launch:
        image = container.built
        rootfs = self.root / "containers" / f"{next(self._count):02d}-{slug(container.name)}"
        rootfs.mkdir(parents=True)
        mounts: dict[str, Path] = {}
        for path, mount in container.mounts.items():
            if mount.kind == "bind" and mount.read_only:
                local = (REPO / mount.source).resolve()
            elif mount.kind == "bind":  # writable: the checkout is not written
                local = self.root / "project" / posixpath.normpath(mount.source)
            elif mount.kind == "emptyDir":  # one per pod
                local = rootfs.parent / f"{rootfs.name}.{mount.kind}" / mount.source
            else:  # a named volume or a claim outlives the container
                local = self.root / f"{mount.kind}s" / slug(mount.source)
            local.mkdir(parents=True, exist_ok=True)
            mounts[path] = local
            view = rootfs / path.lstrip("/")  # so paths relative to the working directory reach it too
            view.parent.mkdir(parents=True, exist_ok=True)
            view.symlink_to(local, target_is_directory=True)
        launch = Launch(container, [], {}, rootfs, rootfs, mounts, {})

        def local_path(path: str) -> str:
            top = path.lstrip("/").split("/", 1)[0]
            if image is not None and path in image.files:
                return str(image.files[path])
            if image is not None and (
                path == posixpath.dirname(image.venv_bin) or path.startswith(posixpath.dirname(image.venv_bin) + "/")
            ):
                return str(BIN.parent / posixpath.relpath(path, posixpath.dirname(image.venv_bin)))
            if top in SYSTEM_DIRS and not any(path == m or path.startswith(m + "/") for m in mounts):
                return path
            return str(launch.path(path))

        def rewrite(value: str, where: str) -> str:
            value = self.rewrite_urls(value, where)
            if value.startswith("/"):
                return local_path(value)
            flag, sep, rest = value.partition("=")
            if sep and flag.startswith("--") and rest.startswith("/"):
                return f"{flag}={local_path(rest)}"
            return value

        env = dict(container.env)
        variables = image.port_variables() if image else {}
        reserved = self._reserved.pop(container.name, {}) if publish else {}
        for port in sorted(set(container.names.values())):
            launch.ports[port] = reserved.get(port) or free_port()
            variable = variables.get(port)
            if variable is None:
                raise Refused(f"{container.name}: serves port {port}, but the entrypoint takes no port variable for it")
            effective = env.get(variable) or str(port)
            if effective == str(port):  # the port mapping: the process listens here on a free port
                env[variable] = str(launch.ports[port])
            elif effective.isdigit():
                raise Refused(f"{container.name}: listens on {effective} (${variable}), not on its port {port}")
            # anything else is left as the container would have it: the process itself refuses it
        if publish:
            for host, port in container.names.items():
                self.endpoints[host] = Endpoint(f"127.0.0.1:{launch.ports[port]}", container.name)
        for key, value in env.items():
            if key == "PATH":
                env[key] = ":".join(local_path(p) if p.startswith("/") else p for p in value.split(":"))
            else:
                env[key] = rewrite(value, f"{container.name}: env {key}")
        for endpoint in {e.owner: e for e in map(self._endpoint_of, container.env.values()) if e}.values():
            if endpoint.store and "AWS_ACCESS_KEY_ID" in env:
                keys = (env["AWS_ACCESS_KEY_ID"], env.get("AWS_SECRET_ACCESS_KEY"))
                if keys != (endpoint.store.user, endpoint.store.password):
                    raise Refused(
                        f"{container.name}: {endpoint.owner} would refuse AWS_ACCESS_KEY_ID "
                        f"{keys[0]!r} and its secret (not its MINIO_ROOT_USER/MINIO_ROOT_PASSWORD)"
                    )
        if image is not None and container.argv[:1] == [image.entrypoint[0]]:  # the script, as its #! says
            head, args = exec_argv(container.argv[:1], image), container.argv[1:]
        else:
            head, args = [], container.argv
        launch.argv = head + [rewrite(a, f"{container.name}: argv") for a in args]
        launch.argv += LOCAL_ARGS.get(container.role or "", ())
        launch.env = env
        launch.cwd = Path(local_path(container.workdir))
        launch.cwd.mkdir(parents=True, exist_ok=True)
        (rootfs / "tmp").mkdir(exist_ok=True)  # every container has a /tmp of its own
        return launch

    # starting ---------------------------------------------------------------------------------

    def _spawn(self, launch: Launch) -> Process:
        name = f"{launch.rootfs.name}"
        process = processes.start(name, launch.argv, self.logs, env=launch.env, cwd=launch.cwd)
        self._exit.callback(process.stop)
        launch.process = process
        return process

    def start(self, container: Container, step: str, publish: bool = True, wait: bool = True) -> Launch:
        """A long-running container; with `wait`, until its health path answers 200."""
        launch = self.localize(container, publish)
        self._spawn(launch)
        if publish:
            self.running[container.name] = launch
        if wait:
            self.healthy(launch, step)
        return launch

    def healthy(self, launch: Launch, step: str, timeout: float = 180) -> None:
        """Wait until a started container's health path answers 200; fail with its output if it exits."""
        path = launch.container.health_path
        if path is None or launch.process is None:
            return
        url = f"{launch.url}{path}"
        try:
            wait_http(launch.process, url, timeout)
            status = httpx.get(url, timeout=10).status_code
        except (ServiceError, httpx.HTTPError) as exc:
            problem = f"not up: {exc}".splitlines()[0]
            raise AssertionError(failure(step, launch, problem, launch.process.log_tail())) from None
        if status != 200:
            raise AssertionError(failure(step, launch, f"{url} answered {status}", launch.process.log_tail()))

    def in_role(self, role: str) -> Launch:
        """The running container in this role (api, mlflow-server)."""
        found = [launch for launch in self.running.values() if launch.container.role == role]
        if len(found) != 1:
            raise AssertionError(f"expected one running container in the role {role!r}, found {len(found)}")
        return found[0]

    def reserve(self, container: Container) -> None:
        """Its DNS names reach it from now on (compose's network aliases and a Service exist before the
        process answers): a port for each of its container ports, its endpoints published."""
        ports = self._reserved.setdefault(container.name, {})
        for port in sorted(set(container.names.values())):
            ports.setdefault(port, free_port())
        for host, port in container.names.items():
            self.endpoints[host] = Endpoint(f"127.0.0.1:{ports[port]}", container.name)

    def launch(self, container: Container) -> Launch:
        launch = self.localize(container, publish=False)
        self._spawn(launch)
        return launch

    def wait(self, launch: Launch, step: str, ok: tuple[int, ...] = (0,), timeout: float = 300) -> Finished:
        assert launch.process is not None
        try:
            code = launch.process.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            launch.process.stop()
            raise AssertionError(
                failure(step, launch, f"still running after {timeout:.0f}s", launch.process.log_tail())
            ) from None
        if code not in ok:
            raise AssertionError(
                failure(step, launch, f"exit {code}, expected {' or '.join(map(str, ok))}", launch.process.log_tail())
            )
        return Finished(step, launch, code)

    def run(self, container: Container, step: str, ok: tuple[int, ...] = (0,), timeout: float = 300) -> Finished:
        """A one-shot container, to its exit."""
        return self.wait(self.launch(container), step, ok, timeout)

    def host(self, command: Documented, step: str, ok: tuple[int, ...] = (0,), timeout: float = 120) -> Finished:
        """A documented command run on the host (the user's shell: this virtual environment on PATH)."""
        home = self.root / "host"
        home.mkdir(exist_ok=True)
        argv = [self.rewrite_urls(a, str(command)) for a in command.argv]
        container = Container(f"the host ({command})", "", command.argv, {}, str(home))
        launch = Launch(container, argv, {"PATH": f"{BIN}:{BASE_PATH}", "HOME": str(home)}, home, home, {}, {})
        self._spawn(launch)
        return self.wait(launch, step, ok, timeout)


# --------------------------------------------------------------------------- the two deployments


class ComposeStack(Stack):
    """docker-compose.yml run as processes: `up`, then the documented `run` lines."""

    def __init__(self, root: Path, compose: Compose | None = None, docs: Path = DEPLOY_DOCS) -> None:
        super().__init__(root)
        self.compose = compose or Compose()
        self.docs = docs

    def up(self) -> None:
        """`docker compose up -d`: the services without a profile, in depends_on order; a service
        another depends on with `condition: service_healthy` is waited for, the others are not."""
        names = self.compose.up_services()
        awaited = {
            dependency
            for name in names
            for dependency, condition in _depends_on(self.compose.service(name)).items()
            if condition == "service_healthy"
        }
        containers = {name: self.compose.container(name) for name in names}
        for container in containers.values():
            if container.built is not None:
                self.reserve(container)
        for name, container in containers.items():
            if container.built is None:
                self.stand_in(container)
            else:
                self.start(container, f"docker compose up: service {name!r}", wait=name in awaited)

    def jobs(self, role: str, docs: Path | None = None) -> list[tuple[str, Container]]:
        """Each documented `docker compose run ... SERVICE ARGS` whose container takes this role."""
        runs = compose_runs(docs or self.docs)
        found = [(str(run.source), self.compose.container(run.service, run.args, run.env)) for run in runs]
        found = [(step, container) for step, container in found if container.role == role]
        if not found:
            raise AssertionError(f"{(docs or self.docs).name} documents no `docker compose run` in the role {role!r}")
        return found


class OverlayStack(Stack):
    """A rendered overlay run as processes: `kubectl apply`, then Jobs from the CronJobs."""

    def __init__(self, root: Path, manifests: Manifests) -> None:
        super().__init__(root)
        self.manifests = manifests

    def up(self) -> None:
        """`kubectl apply -k`: the datastores and the bucket Job stood in, the app Deployments started."""
        objs = self.manifests.objs
        # Datastore Deployments first, then the Jobs that run on apply (a CronJob waits for its schedule).
        for kind in ("Deployment", "Job"):
            for obj in (o for o in objs if o["kind"] == kind):
                for spec in pod_spec(obj)["containers"]:
                    if not self.manifests.is_app(spec):
                        self.stand_in(self.manifests.container(obj, spec))
        apps = [
            (f"kubectl apply: Deployment/{obj['metadata']['name']}", self.manifests.container(obj, spec))
            for obj in objs
            if obj["kind"] == "Deployment"
            for spec in pod_spec(obj)["containers"]
            if self.manifests.is_app(spec)
        ]
        for _, container in apps:  # every Service exists as soon as it is applied
            self.reserve(container)
        launches = [(step, self.start(container, step, wait=False)) for step, container in apps]
        for step, launch in launches:  # side by side, as the cluster starts them
            self.healthy(launch, step)

    def jobs(self, role: str, docs: Path | None = None) -> list[tuple[str, Container]]:
        """The app containers of the Jobs and CronJobs (`kubectl create job --from=cronjob/...`) in this role."""
        found = [
            (f"kubectl create job --from={o['kind'].lower()}/{o['metadata']['name']}", c)
            for o in self.manifests.objs
            if o["kind"] in ("Job", "CronJob")
            for c in self.manifests.containers_of(o)
            if c.built is not None and c.role == role
        ]
        if not found:
            raise AssertionError(f"no Job or CronJob runs the role {role!r}")
        return found


# --------------------------------------------------------------------------- the walk-through


def customers(n: int | None = None) -> list[dict[str, Any]]:
    """Real customers of data/telco_churn.csv as the API takes them."""
    from churn_platform import data

    frame = data.load(CUSTOMERS).drop(columns=["churn"])
    return data.to_records(frame if n is None else frame.head(n))


def stage_input(stack: Stack, container: Container, uri: str) -> None:
    """Put the real customers at an s3:// input, as a user must before the job reads it: a key
    (CSV or Parquet by its name) or a prefix (a CSV under it) that holds nothing yet."""
    from churn_platform import data

    store = stack.store_of(container)
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    s3 = store.client()
    if key.endswith("/") or not key:
        if s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0):
            return
        s3.upload_file(str(CUSTOMERS), bucket, f"{key}customers.csv")
        return
    if key.lower().endswith((".parquet", ".pq")):
        buffer = io.BytesIO()
        data.read_table(CUSTOMERS).to_parquet(buffer, index=False)
        s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    else:
        s3.upload_file(str(CUSTOMERS), bucket, key)


def registered_versions(tracking_uri: str, model: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return client.search_model_versions(f"name='{model}'")


def inference_log_rows(url: str) -> int:
    import sqlalchemy as sa

    from churn_platform.contract import INFERENCE_LOG_TABLE

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT count(*) FROM {INFERENCE_LOG_TABLE}")).scalar_one()
    except sa.exc.ProgrammingError:  # no table yet
        return 0
    finally:
        engine.dispose()


@dataclass
class Walkthrough:
    """docs/deploy.md's steps on a running stack: train, promote, predict, monitor, score. Each step
    runs once (its result or failure is kept for the next test that needs it)."""

    stack: ComposeStack | OverlayStack
    docs: Path = DEPLOY_DOCS
    #: Above CHURN_MONITOR_MIN_ROWS (1,000), so the monitor jobs give a verdict, not exit 2.
    predictions: int = 1500

    def train(self, docs: Path | None = None) -> list[Finished]:
        """Each train job as documented, on the real customers; exit 0."""
        finished = []
        for step, container in self.stack.jobs("train", docs):
            data = container.option("--data")
            if data and data.startswith("s3://"):
                stage_input(self.stack, container, data)
            finished.append(self.stack.run(container, f"train ({step})"))
        return finished

    def trained(self) -> list[Any]:
        """The versions the train job registered in the stack's MLflow server."""

        def run() -> list[Any]:
            (done,) = self.train()
            model = done.launch.container.env.get("CHURN_MODEL_NAME") or "churn"
            server = self.stack.in_role("mlflow-server")
            versions = registered_versions(server.url, model)
            if not versions:
                used = done.launch.container.env.get("MLFLOW_TRACKING_URI", "unset: the embedded sqlite:///mlflow.db")
                raise AssertionError(
                    f"{done.step}: exit 0, but {server.container.name} has no version of {model!r} "
                    f"(the job's MLFLOW_TRACKING_URI: {used}):\n{done.tail()}"
                )
            return versions

        return self.stack.once("train", run)

    def promoted(self) -> Finished:
        """The documented `churn-platform promote` from the host (the published or forwarded port)."""

        def run() -> Finished:
            self.trained()
            commands = documented(self.docs, "churn-platform", "promote")
            assert commands, f"{self.docs.name} documents no `churn-platform promote`"
            return self.stack.host(commands[0], f"promote ({commands[0]})")

        return self.stack.once("promote", run)

    def served(self) -> dict[str, Any]:
        """The running API is ready with the promoted version and predicts real customers; their
        rows reach the inference log."""

        def run() -> dict[str, Any]:
            self.promoted()
            api = self.stack.in_role("api")
            self.stack.healthy(api, "the API starts")
            try:
                wait_ready(api.url, timeout=90)
            except ServiceError as exc:
                assert api.process is not None
                raise AssertionError(failure("the API becomes ready", api, str(exc), api.process.log_tail())) from None
            rows, predictions = customers(self.predictions), []
            for start in range(0, len(rows), 500):  # batches under CHURN_MAX_BATCH_SIZE
                response = httpx.post(f"{api.url}/predict", json={"customers": rows[start : start + 500]}, timeout=60)
                assert response.status_code == 200, f"POST /predict: {response.status_code} {response.text[:1000]}"
                predictions += response.json()["predictions"]
            deadline = time.monotonic() + 30
            url = api.env["CHURN_INFERENCE_LOG_URL"]
            while inference_log_rows(url) < len(rows):
                assert time.monotonic() < deadline, f"the inference log at {url} has {inference_log_rows(url)} rows"
                time.sleep(0.5)
            return {"ready": httpx.get(f"{api.url}/ready", timeout=10).json(), **response.json(),
                    "predictions": predictions}

        return self.stack.once("serve", run)

    def monitor_and_score(self) -> tuple[list[Finished], list[Finished]]:
        """Every monitor and score job, side by side: monitor exits 0 or 1 (a verdict), score 0."""

        def run() -> tuple[list[Finished], list[Finished]]:
            self.served()
            monitors = [(f"monitor ({step})", self.stack.launch(c), (0, 1)) for step, c in self.stack.jobs("monitor")]
            scores = []
            for step, container in self.stack.jobs("score"):
                source = container.option("--input")
                if source and source.startswith("s3://"):
                    stage_input(self.stack, container, source)
                scores.append((f"score ({step})", self.stack.launch(container), (0,)))
            done = {step: self.stack.wait(launch, step, ok) for step, launch, ok in [*monitors, *scores]}
            return [done[s] for s, _, _ in monitors], [done[s] for s, _, _ in scores]

        return self.stack.once("monitor and score", run)

    def features(self) -> dict[str, Any]:
        """Every feature-store job as shipped (its export staged first when it is an s3:// key),
        exit 0; then the running API, which opened no store at start, answers by id within its
        10 s retry, as `/predict` answers for the same customers' features."""

        def run() -> dict[str, Any]:
            self.served()
            finished = []
            for step, container in self.stack.jobs("features"):
                args = container.argv[container.argv.index("features") + 1 :]
                source = args[args.index("refresh") + 1]
                if source.startswith("s3://"):
                    stage_input(self.stack, container, source)
                finished.append(self.stack.run(container, f"features ({step})"))
            api = self.stack.in_role("api")
            rows = customers(50)
            ids = [r["customer_id"] for r in rows]
            deadline = time.monotonic() + 60
            while True:
                by_id = httpx.post(f"{api.url}/predict/by-id", json={"customer_ids": ids}, timeout=60)
                if by_id.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert by_id.status_code == 200, f"POST /predict/by-id: {by_id.status_code} {by_id.text[:1000]}"
            sent = httpx.post(f"{api.url}/predict", json={"customers": rows}, timeout=60)
            assert sent.status_code == 200, sent.text[:1000]
            return {"jobs": finished, "by_id": by_id.json(), "sent": sent.json(),
                    "ready": httpx.get(f"{api.url}/ready", timeout=10).json()}  # fmt: skip

        return self.stack.once("features", run)

    def output_of(self, finished: Finished) -> str:
        """Where a score job's --output is, checked to exist."""
        output = finished.launch.container.option("--output")
        assert output, f"{finished.step}: no --output"
        if output.startswith("s3://"):
            bucket, _, key = output.removeprefix("s3://").partition("/")
            store = self.stack.store_of(finished.launch.container)
            head = store.client().head_object(Bucket=bucket, Key=key)
            return f"{output} ({head['ContentLength']} bytes)"
        path = finished.path(output)
        assert path.is_file(), f"{finished.step}: {output} ({path}) was not written"
        return str(path)
