"""infra/ as a reader would check it: every manifest parses, every job command it runs names a real
job whose own CLI accepts the arguments and whose config loads, every schedule parses, token auth is
on wherever a Ray cluster starts, nothing listens publicly, no file holds a credential, and the
bucket-workspace KubeRay example (kuberay/s3/) shares no volume and tracks into the MLflow server."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from pipelines import cli
from pipelines.cli import STAGE_JOBS, job_parser
from pipelines.config import LoopConfig, load_config
from pipelines.errors import UserError
from pipelines.runtime.tracking import is_secret_name, redact
from tests.conftest import ROOT

INFRA = ROOT / "infra"
# What git would commit: a user's own git-ignored secrets files (mlflow.env, ...) are not checked.
FILES = sorted(
    ROOT / name
    for name in subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "infra"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    if (ROOT / name).is_file()
)
YAML_FILES = [p for p in FILES if p.suffix in (".yaml", ".yml")]
# The image puts the repository here (infra/docker/Dockerfile); Kubernetes manifests use absolute paths.
APP_DIR = re.search(r"^WORKDIR\s+(\S+)", (INFRA / "docker" / "Dockerfile").read_text(), re.M).group(1)
# The KubeRay example whose workspace is a bucket: no shared volume, MLflow as a server.
BUCKET_EXAMPLE = "kuberay/s3/"
JOB_CALL = re.compile(r"(?:^|[\s;&|(=])(?:\S*/)?python3?\s+(\S*\bjobs/(\w+)\.py)(.*)")
SHELL_OPERATOR = set("();<>|&")


def rel(path: Path) -> str:
    return str(path.relative_to(INFRA))


def yaml_docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def strings(tree) -> list[str]:
    if isinstance(tree, dict):
        return [s for value in tree.values() for s in strings(value)]
    if isinstance(tree, list):
        return [s for item in tree for s in strings(item)]
    return [tree] if isinstance(tree, str) else []


def as_manifest(text: str) -> dict | None:
    """A Kubernetes object held as text inside another (the RayJob in the CronJob's ConfigMap)."""
    if "apiVersion:" in text and "kind:" in text:
        inner = yaml.safe_load(text)
        return inner if isinstance(inner, dict) else None
    return None


def embedded_manifests(doc) -> list[dict]:
    inner = [m for m in map(as_manifest, strings(doc)) if m is not None]
    return [obj for m in inner for obj in (m, *embedded_manifests(m))]


def yaml_strings(tree) -> list[str]:
    """The string values of a document, those of embedded manifests in place of their text."""
    found = []
    for text in strings(tree):
        inner = as_manifest(text)
        found += yaml_strings(inner) if inner is not None else [text]
    return found


def manifests() -> list[tuple[str, dict]]:
    """Every YAML document in infra/ (and the ones embedded in them), with the file it came from."""
    return [
        (rel(path), obj)
        for path in YAML_FILES
        for doc in yaml_docs(path)
        for obj in [doc, *embedded_manifests(doc)]
    ]


def k8s_objects(kind: str | None = None) -> list[tuple[str, dict]]:
    return [(f, d) for f, d in manifests() if "apiVersion" in d and (kind is None or d.get("kind") == kind)]


# --- the job commands ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobCommand:
    source: str  # file under infra/
    path: str  # the job file as written, e.g. /home/ray/app/jobs/pretrain.py
    job: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.source}: python {self.path} {shlex.join(self.args)}"


def job_commands_in(text: str, source: str) -> list[JobCommand]:
    """`python [dir/]jobs/<job>.py ARGS` in shell text, ARGS ending at the first shell operator."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        match = JOB_CALL.search(line)
        if not match:
            continue
        lexer = shlex.shlex(match.group(3), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        args = []
        for token in lexer:
            if set(token) <= SHELL_OPERATOR:
                break
            args.append(token)
        found.append(JobCommand(source, match.group(1), match.group(2), tuple(args)))
    return found


def texts_of(path: Path) -> list[str]:
    """The shell text a file holds: YAML string values and comments, Markdown code blocks, else all."""
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        comments = [line.split("#", 1)[1] for line in text.splitlines() if line.lstrip().startswith("#")]
        return [*comments, *(s for doc in yaml_docs(path) for s in yaml_strings(doc))]
    if path.suffix == ".md":
        return re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)
    return [text]


def all_job_commands() -> list[JobCommand]:
    commands = {c for path in FILES for text in texts_of(path) for c in job_commands_in(text, rel(path))}
    return sorted(commands, key=str)


def repo_path(written: str) -> Path:
    """A path as a manifest writes it (relative to the checkout, or under the image's APP_DIR)."""
    if written.startswith(APP_DIR + "/"):
        written = written[len(APP_DIR) + 1 :]
    assert not written.startswith(("/", "~")), f"{written} is outside the repository"
    return ROOT / written


COMMANDS = all_job_commands()


def test_every_manifest_parses():
    for path in YAML_FILES:
        docs = yaml_docs(path)
        assert docs, f"{rel(path)} holds no YAML document"
        assert all(isinstance(d, dict) for d in docs), f"{rel(path)}: a document is not a mapping"
    kinds = {d["kind"] for _, d in k8s_objects()}
    assert {"RayCluster", "RayJob", "RayCronJob", "CronJob", "Role", "Service", "Deployment"} <= kinds


def test_the_schedules_and_submissions_are_all_there():
    found = {(c.source, c.job) for c in COMMANDS}
    expected = {
        ("kuberay/rayjob-pretrain.yaml", "pretrain"),
        ("kuberay/raycronjob-refresh.yaml", "refresh_corpus"),
        ("kuberay/cronjob-refresh.yaml", "refresh_corpus"),
        ("kuberay/s3/rayjob-pretrain.yaml", "pretrain"),
        ("vm/cluster.yaml", "pretrain"),
        ("vm/cluster.yaml", "refresh_corpus"),
        ("local/crontab", "refresh_corpus"),
        ("local/gpt2-refresh.service", "refresh_corpus"),
        ("README.md", "pretrain"),
        ("README.md", "refresh_corpus"),
    }
    assert expected <= found, f"missing: {expected - found}"


def test_stage_jobs_table_matches_the_job_files():
    for job, stage in STAGE_JOBS.items():
        assert f'only="{stage}"' in (ROOT / "jobs" / f"{job}.py").read_text(), job


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.source}:{c.job}:{i}" for i, c in enumerate(COMMANDS)])
def test_job_command_resolves_parses_and_loads_its_config(command):
    job_file = repo_path(command.path)
    assert job_file.is_file(), f"{command}: no job file {job_file.relative_to(ROOT)}"
    assert job_file == ROOT / "jobs" / f"{command.job}.py"
    try:
        parser = job_parser(command.job)
    except UserError as exc:
        pytest.fail(f"{command}: {exc}")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(list(command.args))
    except SystemExit:
        pytest.fail(f"{command}: the job's CLI rejects it: {stderr.getvalue().strip()}")
    assert args.config, f"{command}: names no --config"
    config = repo_path(args.config)
    assert config.is_file(), f"{command}: config {config.relative_to(ROOT)} does not exist"
    try:
        load_config(config, args.overrides)
    except UserError as exc:
        pytest.fail(f"{command}: {exc}")


def test_job_parser_of_a_job_that_is_no_stage_is_its_build_parser(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "_path.py").write_text("")
    (jobs / "custom.py").write_text(
        "import _path\n"
        "from pipelines.cli import base_parser\n"
        "def build_parser():\n"
        "    parser = base_parser('jobs/custom.py', 'a job of its own')\n"
        "    parser.add_argument('--only-here', action='store_true')\n"
        "    return parser\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit('loading a job must not run it')\n"
    )
    (jobs / "bare.py").write_text("VALUE = 1\n")
    monkeypatch.setattr(cli, "JOBS_DIR", jobs)
    args = job_parser("custom").parse_args(["--config", "c.yaml", "--set", "a.b=1", "--only-here"])
    assert args.only_here and args.config == "c.yaml" and args.overrides == ["a.b=1"]
    with pytest.raises(UserError, match="jobs/bare.py defines no build_parser"):
        job_parser("bare")
    with pytest.raises(UserError, match="no file jobs/missing.py"):
        job_parser("missing")


# --- schedules ----------------------------------------------------------------------------------------
def cron_schedules() -> list[tuple[str, str]]:
    found = [(f, d["spec"]["schedule"]) for f, d in k8s_objects() if d["kind"] in ("CronJob", "RayCronJob")]
    for line in (INFRA / "local" / "crontab").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            found.append(("local/crontab", " ".join(line.split()[:5])))
    return found


def test_cron_schedules_parse_and_agree():
    from croniter import croniter

    schedules = cron_schedules()
    assert {f for f, _ in schedules} == {
        "kuberay/raycronjob-refresh.yaml",
        "kuberay/cronjob-refresh.yaml",
        "local/crontab",
    }
    for source, expr in schedules:
        assert len(expr.split()) == 5 and croniter.is_valid(expr), f"{source}: bad schedule {expr!r}"
    assert len({expr for _, expr in schedules}) == 1, f"the schedules differ: {schedules}"


def unit_entries(path: Path) -> list[tuple[str, str]]:
    """(key, value) of a systemd unit file; keys such as Environment= repeat."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [tuple(line.split("=", 1)) for line in lines if "=" in line and not line.startswith(("#", ";"))]


@pytest.fixture
def systemd_analyze():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    return "systemd-analyze"


def test_systemd_units_verify_clean(systemd_analyze, tmp_path):
    """systemd's own checker: known keys, valid specifiers, the commands exist in a checkout at
    ~/gpt2-platform (this repository, symlinked into a scratch home)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "gpt2-platform").symlink_to(ROOT)
    units = sorted(str(p) for p in INFRA.glob("local/gpt2-*") if p.suffix in (".service", ".timer"))
    assert len(units) == 3
    proc = subprocess.run(
        [systemd_analyze, "verify", "--man=no", *units],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def test_systemd_timer_calendar_parses(systemd_analyze):
    calendar = dict(unit_entries(INFRA / "local" / "gpt2-refresh.timer"))["OnCalendar"]
    proc = subprocess.run([systemd_analyze, "calendar", calendar], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Next elapse" in proc.stdout


# --- security defaults --------------------------------------------------------------------------------
def token_auth_clusters() -> set[str]:
    names = set()
    for source, cluster in k8s_objects("RayCluster"):
        auth = cluster["spec"].get("authOptions") or {}
        assert auth.get("mode") == "token", (
            f"{source}: RayCluster {cluster['metadata']['name']} without token auth"
        )
        assert auth.get("secretName"), f"{source}: the token should come from a Secret you create"
        names.add(cluster["metadata"]["name"])
    return names


def test_token_auth_in_every_kuberay_cluster_and_job():
    clusters = token_auth_clusters()
    for source, obj in k8s_objects():
        if obj["kind"] not in ("RayJob", "RayCronJob"):
            continue
        spec = obj["spec"]["jobTemplate"] if obj["kind"] == "RayCronJob" else obj["spec"]
        if "rayClusterSpec" in spec:
            assert (spec["rayClusterSpec"].get("authOptions") or {}).get("mode") == "token", source
        else:
            selected = spec["clusterSelector"]["ray.io/cluster"]
            assert selected in clusters, f"{source}: runs on {selected!r}, not a token-auth RayCluster here"


def in_bucket_example(source: str) -> bool:
    return source.startswith(BUCKET_EXAMPLE)


def ray_pods(cluster: dict) -> list[tuple[str, dict]]:
    """(group, pod template) of a RayCluster: the head, then each worker group."""
    spec = cluster["spec"]
    groups = [("head", spec["headGroupSpec"]), *((g["groupName"], g) for g in spec["workerGroupSpecs"])]
    return [(name, group["template"]) for name, group in groups]


def configmaps() -> dict[tuple[str, str], dict]:
    return {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d.get("data") or {}
        for _, d in k8s_objects("ConfigMap")
    }


def container_env(container: dict, namespace: str) -> dict[str, str]:
    """The plain environment a container gets: its ConfigMaps' data (envFrom, later sources win over
    earlier ones), then its `env` values. Secrets' values are not known here and not wanted."""
    maps, env = configmaps(), {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            ref = source["configMapRef"]
            key = (namespace, ref["name"])
            assert key in maps or ref.get("optional"), f"envFrom: no ConfigMap {ref['name']} in infra/"
            env.update({name: str(value) for name, value in maps.get(key, {}).items()})
    env.update({e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e})
    return env


def test_kuberay_jobs_workspace_is_shared_storage_on_every_ray_pod():
    """The shared-volume example: its jobs use /mnt/workspace, which every Ray pod mounts from an RWX claim."""
    workspaces = {
        a.split("=", 1)[1]
        for c in COMMANDS
        if c.source.startswith("kuberay/") and not in_bucket_example(c.source)
        for a in c.args
        if a.startswith("workspace=")
    }
    assert workspaces == {"/mnt/workspace"}, workspaces
    claims = {d["metadata"]["name"]: d["spec"] for _, d in k8s_objects("PersistentVolumeClaim")}
    clusters = [c for f, c in k8s_objects("RayCluster") if not in_bucket_example(f)]
    assert clusters
    for pod in (template["spec"] for cluster in clusters for _, template in ray_pods(cluster)):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/mnt/workspace"]
            claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
            assert claims[claim]["accessModes"] == ["ReadWriteMany"], claim


SHARED_VOLUME_TYPES = {"persistentVolumeClaim", "ephemeral", "nfs", "csi", "iscsi", "cephfs", "glusterfs"}
AWS_CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def mlflow_server_address(uri: str, namespace: str) -> bool:
    """Whether a tracking URI is the in-cluster MLflow Service of mlflow/k8s.yaml, as DNS names it
    (service, service.namespace, service.namespace.svc[.cluster.local]), on its port."""
    url = urlsplit(uri)
    if url.scheme not in ("http", "https") or not url.hostname:
        return False
    name, _, rest = url.hostname.partition(".")
    ns = rest.split(".", 1)[0] if rest else namespace
    if rest and rest.removeprefix(ns) not in ("", ".svc", ".svc.cluster.local"):
        return False
    port = url.port or {"http": 80, "https": 443}[url.scheme]
    return any(
        d["metadata"]["name"] == name
        and d["metadata"]["namespace"] == ns
        and port in {p["port"] for p in d["spec"]["ports"]}
        for f, d in k8s_objects("Service")
        if f == "mlflow/k8s.yaml"
    )


def bucket_example_jobs() -> list[tuple[JobCommand, list[dict]]]:
    """Each job command of the bucket example, with the RayClusters it runs on: the one its RayJob or
    RayCronJob selects; for a command elsewhere in those files (a comment), every cluster there."""
    objects = [(f, d) for f, d in k8s_objects() if in_bucket_example(f)]
    clusters = {d["metadata"]["name"]: d for _, d in objects if d["kind"] == "RayCluster"}
    runs_on = {}
    for source, obj in objects:
        if obj["kind"] in ("RayJob", "RayCronJob"):
            spec = obj["spec"]["jobTemplate"] if obj["kind"] == "RayCronJob" else obj["spec"]
            selected = spec["clusterSelector"]["ray.io/cluster"]
            assert selected in clusters, (
                f"{source}: runs on {selected!r}, not a RayCluster of {BUCKET_EXAMPLE}"
            )
            for command in job_commands_in(spec["entrypoint"], source):
                runs_on[command] = [clusters[selected]]
    commands = [c for c in COMMANDS if in_bucket_example(c.source)]
    return [(c, runs_on.get(c, list(clusters.values()))) for c in commands]


def cache_volume(container: dict, pod: dict, env: dict[str, str]) -> dict | None:
    """The volume PIPELINES_CACHE_DIR lies on (the part before a `{node}`), if any."""
    cache_dir = env.get("PIPELINES_CACHE_DIR", "").split("{node}", 1)[0].rstrip("/")
    mounts = [
        m
        for m in container.get("volumeMounts") or []
        if cache_dir.startswith("/") and (cache_dir + "/").startswith(m["mountPath"].rstrip("/") + "/")
    ]
    if not mounts:
        return None
    name = max(mounts, key=lambda m: len(m["mountPath"]))["name"]
    return {v["name"]: v for v in pod.get("volumes") or []}[name]


def test_bucket_example_pods_share_no_volume_and_cache_on_their_node():
    """No PersistentVolumeClaim or other shared volume; a node-local download cache; credentials from a
    Secret or the pods' ServiceAccount, never in plain env; the pods may reach the MLflow server."""
    objects = [(f, d) for f, d in k8s_objects() if in_bucket_example(f)]
    kinds = {d["kind"] for _, d in objects}
    assert {"RayCluster", "RayJob"} <= kinds, f"{BUCKET_EXAMPLE} needs a RayCluster and a RayJob: {kinds}"
    assert not kinds & {"PersistentVolumeClaim", "PersistentVolume"}, kinds
    accounts = {d["metadata"]["name"] for _, d in objects if d["kind"] == "ServiceAccount"}
    (policy,) = [d for f, d in k8s_objects("NetworkPolicy") if f == "mlflow/k8s.yaml"]
    admitted = [r["podSelector"]["matchLabels"] for entry in policy["spec"]["ingress"] for r in entry["from"]]
    for source, cluster in [(f, d) for f, d in objects if d["kind"] == "RayCluster"]:
        head_account = cluster["spec"]["headGroupSpec"]["template"]["spec"].get("serviceAccountName")
        for group, template in ray_pods(cluster):
            where = f"{source}: {cluster['metadata']['name']}/{group}"
            pod = template["spec"]
            for volume in pod.get("volumes") or []:
                assert not set(volume) & SHARED_VOLUME_TYPES, f"{where}: volume {volume['name']} is shared"
            labels = template["metadata"]["labels"]
            assert any(labels.items() >= r.items() for r in admitted), (
                f"{where}: MLflow's NetworkPolicy drops it"
            )
            account = pod.get("serviceAccountName")
            assert account in accounts, f"{where}: ServiceAccount {account!r} is not in {BUCKET_EXAMPLE}"
            if group != "head":  # KubeRay binds the autoscaler's Role (patch pods) to the head's account
                assert account != head_account, f"{where}: runs as the head's ServiceAccount"
            for container in pod["containers"]:
                env = container_env(container, cluster["metadata"]["namespace"])
                plain = {k for k in env if k in AWS_CREDENTIALS or is_secret_name(k)}
                assert not plain, f"{where}: {sorted(plain)} in plain env: use the Secret"
                secrets = [s for s in container.get("envFrom") or [] if "secretRef" in s]
                assert secrets, f"{where}: no Secret for the credentials (envFrom secretRef)"
                assert_cache_on_node_disk(container, pod, env, where)


def assert_cache_on_node_disk(container: dict, pod: dict, env: dict[str, str], where: str) -> None:
    volume = cache_volume(container, pod, env)
    assert volume is not None, (
        f"{where}: PIPELINES_CACHE_DIR {env.get('PIPELINES_CACHE_DIR')!r} is on no volume"
    )
    on_disk = "emptyDir" in volume and (volume["emptyDir"] or {}).get("medium") != "Memory"
    assert on_disk or "hostPath" in volume, f"{where}: cache volume {volume['name']} is not the node's disk"


def test_every_ray_pod_stages_checkpoints_and_downloads_on_its_nodes_disk():
    """PIPELINES_CACHE_DIR (checkpoint staging, bucket downloads) on an emptyDir or hostPath of the
    node in every RayCluster, whichever the workspace: not the image's writable layer or /tmp."""
    clusters = k8s_objects("RayCluster")
    assert len(clusters) >= 2
    for source, cluster in clusters:
        for group, template in ray_pods(cluster):
            for container in template["spec"]["containers"]:
                env = container_env(container, cluster["metadata"]["namespace"])
                where = f"{source}: {cluster['metadata']['name']}/{group}"
                assert_cache_on_node_disk(container, template["spec"], env, where)


def test_bucket_example_jobs_use_a_bucket_workspace_and_the_mlflow_server():
    """Every job command: an s3:// workspace, and a tracking URI (`mlflow.tracking_uri`, else
    MLFLOW_TRACKING_URI on every container of the cluster it runs on) that is the MLflow Service."""
    jobs = bucket_example_jobs()
    assert jobs, f"no job command in {BUCKET_EXAMPLE}"
    for command, runs_on in jobs:
        args = job_parser(command.job).parse_args(list(command.args))
        cfg = load_config(repo_path(args.config), args.overrides)
        workspace = urlsplit(cfg.workspace)
        assert workspace.scheme == "s3" and workspace.netloc, (
            f"{command}: workspace {cfg.workspace} is no bucket"
        )
        for cluster in runs_on:
            for group, template in ray_pods(cluster):
                for container in template["spec"]["containers"]:
                    env = container_env(container, cluster["metadata"]["namespace"])
                    tracking = cfg.mlflow.tracking_uri or env.get("MLFLOW_TRACKING_URI")
                    assert tracking, (
                        f"{command}: no mlflow.tracking_uri, and no MLFLOW_TRACKING_URI on {group}"
                    )
                    assert mlflow_server_address(tracking, cluster["metadata"]["namespace"]), (
                        f"{command}: {tracking} ({group}) is not the MLflow server of mlflow/k8s.yaml"
                    )


def _without_storage(cluster: dict) -> dict:
    """A RayCluster less what depends on where the workspace lives: its name, the workspace and cache
    volumes, envFrom, the pods' identity and their disk requests."""
    cluster = copy.deepcopy(cluster)
    cluster["metadata"].pop("name")
    for _, template in ray_pods(cluster):
        pod = template["spec"]
        pod.pop("serviceAccountName", None)
        dropped = set()
        for container in pod["containers"]:
            cache = cache_volume(container, pod, container_env(container, cluster["metadata"]["namespace"]))
            dropped |= {cache["name"]} if cache else set()
            dropped |= {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/mnt/workspace"}
            container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] not in dropped]
            container.pop("envFrom", None)
            for part in (container.get("resources") or {}).values():
                part.pop("ephemeral-storage", None)
        pod["volumes"] = [v for v in pod["volumes"] if v["name"] not in dropped]
    return cluster


def test_bucket_example_is_the_shared_volume_cluster_apart_from_storage():
    """kuberay/s3/ repeats raycluster.yaml rather than patch it (Kustomize cannot merge a RayCluster's
    lists): the copy may differ only where the workspace lives, and its RayJob only in the workspace."""
    ((_, shared),) = [(f, d) for f, d in k8s_objects("RayCluster") if f == "kuberay/raycluster.yaml"]
    ((_, bucket),) = [(f, d) for f, d in k8s_objects("RayCluster") if in_bucket_example(f)]
    assert _without_storage(bucket) == _without_storage(shared)
    for (_, a), (_, b) in zip(ray_pods(shared), ray_pods(bucket), strict=True):
        for c_shared, c_bucket in zip(a["spec"]["containers"], b["spec"]["containers"], strict=True):
            missing = [s for s in c_shared.get("envFrom") or [] if s not in (c_bucket.get("envFrom") or [])]
            assert not missing, f"the bucket cluster's containers lack {missing}"

    def settings(command: JobCommand) -> tuple:
        return command.job, tuple(re.sub(r"^workspace=.*", "workspace=", a) for a in command.args)

    (shared_job,) = [c for c in COMMANDS if c.source == "kuberay/rayjob-pretrain.yaml"]
    (bucket_job,) = [c for c in COMMANDS if c.source == BUCKET_EXAMPLE + "rayjob-pretrain.yaml"]
    assert settings(bucket_job) == settings(shared_job)


def test_vm_cluster_yaml_passes_rays_own_validation():
    """What `ray up` does first: fill in the provider's defaults, then check against Ray's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    (cluster,) = yaml_docs(INFRA / "vm" / "cluster.yaml")
    validate_config(prepare_config(cluster))


def test_token_auth_and_loopback_dashboard_on_vms():
    (cluster,) = yaml_docs(INFRA / "vm" / "cluster.yaml")
    starts = [
        c
        for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
        if "ray start" in c
    ]
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token" in c for c in starts), starts
    assert "--dashboard-host=127.0.0.1" in cluster["head_start_ray_commands"][-1]
    assert "~/.ray/auth_token" in cluster["file_mounts"]  # Ray's default token path, on every node


# --- the training recipes fit the GPU nodes -----------------------------------------------------------
# Host RAM a GPU training worker needs besides its GPU: the process with torch, CUDA and NCCL (~4 GiB
# resident), the memory-mapped shard pages it reads (a container's memory limit counts them: ~20 GB of
# shards for the 10B-token run, shared by a node's workers), pinned staging buffers (DeepSpeed, NCCL's
# proxy), and the state dict on the host while a checkpoint is written (fp32 weights and Adam moments
# of 124M parameters, ~1.5 GB): ~10 GiB, so 16 GiB with headroom.
WORKER_MEMORY = 16 * 2**30
GPU_SECTIONS = ("train", "finetune")
# The target layout, 2 hosts x 8 GPUs, beyond the shipped 8 workers.
TWO_HOSTS = [("gpt2-124m.yaml", "train.num_workers=16")]
QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)")
QUANTITY_SUFFIXES = {
    "": 1,
    "m": 1e-3,
    **{s: 1000.0**n for n, s in enumerate("kMGTPE", 1)},
    **{s + "i": 2 ** (10 * n) for n, s in enumerate("KMGTPE", 1)},
}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("60Gi", "8", "500m") as a number: bytes, CPUs, devices."""
    match = QUANTITY.fullmatch(str(value).strip())
    if not match or match.group(2) not in QUANTITY_SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * QUANTITY_SUFFIXES[match.group(2)]


@dataclass(frozen=True)
class NodeType:
    """What one node of a GPU node type gives Ray tasks, and how many such nodes there may be."""

    where: str
    cpus: float
    gpus: float
    memory: float  # bytes for tasks, the object store's share taken out
    max_nodes: int


def memory_for_tasks(total: float) -> float:
    """A node's RAM less Ray's object store, which lives in the same RAM (/dev/shm): by default 30%
    of it, at most 200 GB."""
    from ray._private import ray_constants

    share = total * ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION
    return total - min(share, ray_constants.DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES)


def vm_gpu_node_types(cluster: dict, source: str) -> list[NodeType]:
    """The worker node types of a `ray up` cluster that declare GPUs: their `resources` are what the
    autoscaler plans with (memory there is already what tasks get), and the nodes are capped by both
    their own max_workers and the cluster's."""
    return [
        NodeType(
            f"{source}: {name}",
            node["resources"].get("CPU", 0),
            node["resources"]["GPU"],
            node["resources"].get("memory", 0),
            min(node["max_workers"], cluster["max_workers"]),
        )
        for name, node in cluster["available_node_types"].items()
        if name != cluster["head_node_type"] and (node.get("resources") or {}).get("GPU")
    ]


def kuberay_gpu_node_types(cluster: dict, source: str) -> list[NodeType]:
    """The worker groups of a RayCluster whose ray-worker container has GPU limits, with the resources
    KubeRay gives Ray there: rayStartParams if set, else the container's limits."""
    found = []
    for group in cluster["spec"]["workerGroupSpecs"]:
        (container,) = [c for c in group["template"]["spec"]["containers"] if c["name"] == "ray-worker"]
        limits = container["resources"]["limits"]
        if not quantity(limits.get("nvidia.com/gpu", 0)):
            continue
        params = group.get("rayStartParams") or {}
        found.append(
            NodeType(
                f"{source}: {cluster['metadata']['name']}/{group['groupName']}",
                quantity(params.get("num-cpus", limits["cpu"])),
                quantity(params.get("num-gpus", limits["nvidia.com/gpu"])),
                memory_for_tasks(quantity(limits["memory"])),
                group["maxReplicas"],
            )
        )
    return found


def gpu_node_types() -> list[NodeType]:
    (cluster,) = yaml_docs(INFRA / "vm" / "cluster.yaml")
    found = vm_gpu_node_types(cluster, "vm/cluster.yaml")
    for source, ray_cluster in k8s_objects("RayCluster"):
        found += kuberay_gpu_node_types(ray_cluster, source)
    return found


def gpu_recipes() -> list[tuple[str, LoopConfig]]:
    """Every GPU training section of the shipped configs, and the TWO_HOSTS variants."""
    runs = [(path.name, ()) for path in sorted((ROOT / "configs").glob("*.yaml"))]
    runs += [(name, (override,)) for name, override in TWO_HOSTS]
    found = []
    for name, overrides in runs:
        cfg = load_config(ROOT / "configs" / name, overrides)
        for section in GPU_SECTIONS:
            loop = cfg.section(section)
            if loop.use_gpu and getattr(loop, "enabled", True):
                found.append((" ".join([f"{name}:{section}", *overrides]), loop))
    return found


def fits(node: NodeType, loop: LoopConfig) -> str | None:
    """Why the workers of `loop` (1 GPU, cpus_per_worker CPUs and WORKER_MEMORY each) do not fit on
    nodes of this type, or None. A node must take as many workers as it has GPUs (all of them, when
    fewer): CPUs or memory short of that strand GPUs and spread the run over more nodes, so more of
    NCCL's traffic leaves NVLink for the network."""
    room = {
        "GPU": (node.gpus // 1, f"{node.gpus:g} GPUs"),
        "CPU": (node.cpus // loop.cpus_per_worker, f"{node.cpus:g} CPUs / {loop.cpus_per_worker} a worker"),
        "memory": (node.memory // WORKER_MEMORY, f"{node.memory / 2**30:.0f} GiB / 16 GiB a worker"),
    }
    per_node = int(min(n for n, _ in room.values()))
    wanted = min(loop.num_workers, int(node.gpus))
    if per_node < wanted:
        short = "; ".join(why for n, why in room.values() if n == per_node)
        return f"{node.where}: {per_node} workers a node ({short}), not {wanted}"
    if node.max_nodes * per_node < loop.num_workers:
        return (
            f"{node.where}: at most {node.max_nodes} nodes x {per_node} workers, "
            f"not num_workers={loop.num_workers}"
        )
    return None


GPU_NODE_TYPES = gpu_node_types()
GPU_RECIPES = gpu_recipes()


def test_quantities_parse_as_kubernetes_writes_them():
    assert quantity("60Gi") == 60 * 2**30
    assert quantity("8") == quantity(8) == 8
    assert quantity("500m") == 0.5
    assert quantity("1.5") == 1.5
    assert quantity("100M") == 100e6
    assert quantity("1e3") == 1000
    assert quantity("1E") == 1e18 and quantity("2Ei") == 2 * 2**60
    for bad in ("8 GB", "Gi", "8Qi", "-1"):
        with pytest.raises(ValueError, match="not a Kubernetes quantity"):
            quantity(bad)


def test_the_fit_covers_every_cluster_manifest_and_gpu_recipe():
    """A GPU node type left out (resources undeclared, GPUs only in requests) would pass unchecked."""
    sources = {node.where.split(":")[0] for node in GPU_NODE_TYPES}
    assert sources == {"vm/cluster.yaml", "kuberay/raycluster.yaml", "kuberay/s3/raycluster.yaml"}, sources
    workers = {name: loop.num_workers for name, loop in GPU_RECIPES}
    assert workers.get("gpt2-124m.yaml:train") == 8, workers
    assert workers.get("gpt2-124m.yaml:train train.num_workers=16") == 16, workers


@pytest.mark.parametrize(
    "node, recipe",
    [(node, recipe) for node in GPU_NODE_TYPES for recipe in GPU_RECIPES],
    ids=[f"{node.where}-{name}" for node in GPU_NODE_TYPES for name, _ in GPU_RECIPES],
)
def test_gpu_recipe_fits_the_gpu_node_type(node, recipe):
    name, loop = recipe
    reason = fits(node, loop)
    assert reason is None, f"{name}: {reason}"


def test_fit_check_refuses_the_old_layouts():
    """Before: a 1-GPU, 4-vCPU VM type (g6e.xlarge), 1-GPU pods with maxReplicas 8, and (made up) an
    8-GPU node with too little memory: each fails for its own reason."""
    (_, shipped), (_, two_hosts) = [r for r in GPU_RECIPES if r[0].startswith("gpt2-124m.yaml:train")]
    g6e = {"max_workers": 8, "resources": {"CPU": 4, "GPU": 1, "memory": 24 * 2**30}}
    cluster = {"max_workers": 16, "head_node_type": "head", "available_node_types": {"gpu": g6e}}
    (vm,) = vm_gpu_node_types(cluster, "old")
    assert fits(vm, shipped) == "old: gpu: 0 workers a node (4 CPUs / 8 a worker), not 1"
    one_gpu_pod = {"cpu": "8", "memory": "60Gi", "nvidia.com/gpu": "1"}
    group = {
        "groupName": "gpu",
        "maxReplicas": 8,
        "template": {"spec": {"containers": [{"name": "ray-worker", "resources": {"limits": one_gpu_pod}}]}},
    }
    (pod,) = kuberay_gpu_node_types(
        {"metadata": {"name": "gpt2"}, "spec": {"workerGroupSpecs": [group]}}, "old"
    )
    assert fits(pod, shipped) is None  # 8 one-GPU pods do hold the 8 workers (over the network)
    assert fits(pod, two_hosts) == "old: gpt2/gpu: at most 8 nodes x 1 workers, not num_workers=16"
    small = NodeType("small", cpus=96, gpus=8, memory=64 * 2**30, max_nodes=2)
    assert fits(small, shipped) == "small: 4 workers a node (64 GiB / 16 GiB a worker), not 8"


def test_local_schedule_submits_with_token_auth_to_a_loopback_head():
    head = unit_entries(INFRA / "local" / "gpt2-ray-head.service")
    start = dict(head)["ExecStart"]
    assert "--dashboard-host=127.0.0.1" in start and "--node-ip-address=127.0.0.1" in start
    for unit in ("gpt2-ray-head.service", "gpt2-refresh.service"):
        env = [v for k, v in unit_entries(INFRA / "local" / unit) if k == "Environment"]
        assert "RAY_AUTH_MODE=token" in env, unit
        assert any(v.startswith("RAY_AUTH_TOKEN_PATH=") for v in env), unit
    submit = dict(unit_entries(INFRA / "local" / "gpt2-refresh.service"))["ExecStart"]
    cron = [line for line in (INFRA / "local" / "crontab").read_text().splitlines() if line[:1].isdigit()]
    for command in (submit, *cron):
        assert "ray job submit --working-dir . -- python jobs/refresh_corpus.py" in command
    assert all("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=" in c for c in cron)


def test_nothing_is_exposed_beyond_the_cluster_or_loopback():
    kinds = {d["kind"] for _, d in k8s_objects()}
    assert not kinds & {"Ingress", "Route", "Gateway", "HTTPRoute"}
    for source, service in k8s_objects("Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", source
    for source, cluster in k8s_objects("RayCluster"):
        head = cluster["spec"]["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress"), source
    (compose,) = yaml_docs(INFRA / "mlflow" / "docker-compose.yaml")
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"compose service {name} publishes {port}"


def mlflow_server_commands() -> list[tuple[str, list[str]]]:
    (compose,) = yaml_docs(INFRA / "mlflow" / "docker-compose.yaml")
    found = [("mlflow/docker-compose.yaml", compose["services"]["mlflow"]["command"])]
    for source, deployment in k8s_objects("Deployment"):
        found += [(source, c["command"]) for c in deployment["spec"]["template"]["spec"]["containers"]]
    return found


def test_mlflow_servers_take_valid_flags_proxy_artifacts_and_refuse_foreign_hosts():
    """The flags parse with `mlflow server`'s own CLI; the hosts clients use pass MLflow's Host check."""
    from mlflow.cli import cli
    from mlflow.server.security_utils import is_allowed_host_header

    ray_pods_use = {  # the ConfigMaps of the Ray pods, and job commands' own mlflow.tracking_uri
        *(data["MLFLOW_TRACKING_URI"] for data in configmaps().values() if "MLFLOW_TRACKING_URI" in data),
        *(
            a.split("=", 1)[1]
            for c in COMMANDS
            if c.source.startswith("kuberay/")
            for a in c.args
            if a.startswith("mlflow.tracking_uri=")
        ),
    }
    clients = {
        "mlflow/docker-compose.yaml": ["127.0.0.1:5000", "localhost:5000"],
        "mlflow/k8s.yaml": sorted(
            u.netloc for u in map(urlsplit, ray_pods_use) if u.scheme.startswith("http")
        ),
    }
    assert clients["mlflow/k8s.yaml"], "no Ray pod's MLFLOW_TRACKING_URI is the in-cluster server"
    commands = mlflow_server_commands()
    assert sorted(source for source, _ in commands) == sorted(clients)
    for source, command in commands:
        assert command[:2] == ["mlflow", "server"], source
        params = cli.commands["server"].make_context("mlflow server", list(command[2:])).params
        assert params["serve_artifacts"] and not params["disable_security_middleware"], source
        assert params["backend_store_uri"] is None, f"{source}: the store URI holds a password: use the env"
        allowed = params["allowed_hosts"].split(",")
        assert all(is_allowed_host_header(allowed, host) for host in clients[source]), (source, allowed)
        assert not is_allowed_host_header(allowed, "mlflow.attacker.example"), source


def test_in_cluster_mlflow_server_proxies_artifacts_to_a_bucket(monkeypatch):
    """What the bucket example tracks into: the k8s.yaml server, set up from its Secret as
    k8s.env.example shows, proxies artifacts to an s3:// --artifacts-destination."""
    from mlflow.cli import cli

    (deployment,) = [d for f, d in k8s_objects("Deployment") if f == "mlflow/k8s.yaml"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": "mlflow-server"}} in container["envFrom"]
    for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
        monkeypatch.delenv(name)
    for line in (INFRA / "mlflow" / "k8s.env.example").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#") and key.startswith("MLFLOW_ARTIFACTS"):
            monkeypatch.setenv(key, value)
    params = cli.commands["server"].make_context("mlflow server", list(container["command"][2:])).params
    assert params["serve_artifacts"] and not params["artifacts_only"]
    assert urlsplit(params["artifacts_destination"]).scheme == "s3", params["artifacts_destination"]


@pytest.fixture
def no_env_secrets(monkeypatch):
    """redact() without this machine's own secrets, so it reports only what the files hold."""
    for name in [n for n in os.environ if is_secret_name(n)]:
        monkeypatch.delenv(name)


def test_no_plaintext_credentials_in_any_file(no_env_secrets):
    for path in FILES:
        if path.name.endswith(".example"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            literal = re.sub(r"\$\{[^}]*\}|\$\w+", "", line)  # ${VAR} interpolations are not values
            assert redact(literal) == literal, f"{rel(path)}:{number} holds a credential: {line.strip()}"
    for source, obj in manifests():
        assert obj.get("kind") != "Secret", f"{source}: create Secrets from git-ignored env files instead"
        if obj.get("kind") == "ConfigMap":
            for key in obj.get("data") or {}:
                assert not (is_secret_name(key) or key in AWS_CREDENTIALS), (
                    f"{source}: {key} belongs in a Secret"
                )
        for env in _env_lists(obj):
            for entry in env:
                if is_secret_name(entry["name"]):
                    assert "value" not in entry, f"{source}: {entry['name']} must come from a Secret"
    (compose,) = yaml_docs(INFRA / "mlflow" / "docker-compose.yaml")
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if is_secret_name(key):
                assert str(value).startswith("${"), f"compose {name}: {key} must come from mlflow.env"
    for path in INFRA.glob("local/*.service"):
        for key, value in unit_entries(path):
            if key == "Environment":
                assert not is_secret_name(value.split("=", 1)[0]), f"{rel(path)}: {value}"


def _env_lists(tree) -> list[list[dict]]:
    """Every container `env:` list in a manifest."""
    if isinstance(tree, dict):
        own = [tree["env"]] if isinstance(tree.get("env"), list) else []
        return own + [e for value in tree.values() for e in _env_lists(value)]
    if isinstance(tree, list):
        return [e for item in tree for e in _env_lists(item)]
    return []


def test_example_env_files_hold_placeholders_and_their_copies_are_git_ignored():
    examples = sorted(INFRA.rglob("*.example"))
    assert len(examples) >= 4
    for example in examples:
        for line in example.read_text().splitlines():
            key, sep, value = line.partition("=")
            if line.startswith("#") or not sep:
                continue
            if is_secret_name(key) or "://" in value and "@" in value:
                assert value == "" or "change-me" in value, f"{rel(example)}: {key} is not a placeholder"
        copy = example.with_suffix("")  # mlflow.env.example -> mlflow.env: where the real values go
        ignored = subprocess.run(["git", "check-ignore", "-q", str(copy)], cwd=ROOT)
        assert ignored.returncode == 0, f"{copy.relative_to(ROOT)} is not git-ignored"
