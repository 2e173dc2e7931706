"""Pipeline steps through the real daemon and a real dockerd: ``envcache pipeline run`` as a user runs it.

Which steps really ran is read from dockerd's own event stream (container starts labelled with
the step's name since the run began), not only from envcache's report. Each test's raw data is
unique, so its step keys are its own although the tests share one daemon (one environment build).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from envcache.builder.engines import BuildahEngine, DockerEngine, Engine
from envcache.builder.engines.base import Mount
from envcache.pipeline import DaemonWorkspace, Dataset, Experiment, PipelineData, PythonScriptStep
from envcache.pipeline import Pipeline as PipelineDefinition
from tests.fixtures.bases import load_into_buildah
from tests.fixtures.daemon import DaemonProcess, start_daemon_process
from tests.fixtures.engines import Buildah, Dockerd
from tests.fixtures.pipelines import PIPELINE_YAML, Project

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipeline_daemon(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tmp = tmp_path_factory.mktemp("pipeline-daemon")
    (tmp / "envcache.toml").write_text(f'[build]\nengine = "docker"\ndocker_host = "{dockerd.host}"\n')
    daemon = start_daemon_process(tmp / "data", 0, "--config", str(tmp / "envcache.toml"))
    try:
        yield daemon
    finally:
        daemon.stop()


class Pipeline:
    """A three-step project on disk, run through the CLI against the daemon."""

    def __init__(self, root: Path, daemon: DaemonProcess, dockerd: Dockerd, base: str) -> None:
        self.project = Project(root, ledger=False)
        self.daemon, self.dockerd = daemon, dockerd
        self.project.write("env.yml", json.dumps({"docker": {"base_image": base}}))
        self.project.write("pipeline.yml", PIPELINE_YAML.replace(
            "steps:\n", "defaults:\n  environment: env.yml\n  variant: cpu\nsteps:\n", 1))
        # Unique numbers: this test's keys are its own on the shared daemon.
        self.numbers = [secrets.randbelow(1000) + 1 for _ in range(3)]
        self.project.write("data/raw.csv", "".join(f"{n}\n" for n in self.numbers))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, XDG_CACHE_HOME=str(self.project.root / ".cache"))
        return subprocess.run([sys.executable, "-m", "envcache.cli", *args, "--url", self.daemon.url],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)

    def run(self, *flags: str, expect: int = 0) -> tuple[dict[str, str], Counter[str], dict]:
        """Run the pipeline → (status per step, containers started per step name, the JSON answer)."""
        since = time.time()
        done = self.cli("pipeline", "run", str(self.project.root / "pipeline.yml"), "--json", *flags)
        assert done.returncode == expect, done.stdout + done.stderr
        answer = json.loads(done.stdout)
        answer["stderr"] = done.stderr
        events = self.dockerd.docker("events", "--since", f"{since:.3f}", "--until", f"{time.time() + 0.5:.3f}",
                                     "--filter", "type=container", "--filter", "event=start",
                                     "--filter", "label=envcache.step.name",
                                     "--format", "{{json .Actor.Attributes}}", text=True, timeout=60).stdout
        started = Counter(json.loads(line).get("envcache.step.name", "?") for line in events.splitlines() if line)
        return {step["name"]: step["status"] for step in answer["report"]["steps"]}, started, answer


@pytest.fixture
def pipeline(tmp_path: Path, pipeline_daemon: DaemonProcess, dockerd: Dockerd,
             python_base_docker: dict[str, str]) -> Pipeline:
    return Pipeline(tmp_path / "project", pipeline_daemon, dockerd, python_base_docker["cpu"])


ALL = ("prepare", "train", "evaluate")


def test_first_run_runs_every_step_in_a_container_and_the_second_starts_none(pipeline: Pipeline,
                                                                            tmp_path: Path) -> None:
    statuses, started, answer = pipeline.run()
    assert statuses == dict.fromkeys(ALL, "ran")
    assert started == Counter(ALL)
    keys = {step["name"]: step["key"] for step in answer["report"]["steps"]}

    statuses, started, again = pipeline.run()
    assert statuses == dict.fromkeys(ALL, "reused")
    assert started == Counter()  # dockerd's own word: no container at all
    assert {step["name"]: step["key"] for step in again["report"]["steps"]} == keys
    assert again["uploaded_files"] == 0  # the daemon had every file already

    # The outputs are the scripts' real results: prepare doubles, train sums × SCALE (3).
    fetched = pipeline.cli("step", "outputs", keys["evaluate"], str(tmp_path / "out"))
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "out" / "metrics" / "score.txt").read_text() == f"score {6 * sum(pipeline.numbers)}"
    shown = pipeline.cli("step", "show", keys["train"], "--json")
    assert shown.returncode == 0, shown.stderr
    details = json.loads(shown.stdout)
    assert details["image"].endswith(f"/envcache/step:{keys['train']}")
    assert [entry[0] for entry in details["snapshot"]] == [".amlignore", ".gitignore", "helpers.py", "scratch.txt",
                                                           "train.py"]
    assert details["record"]["script_name"] == "train.py" and details["record"]["exit_code"] == 0
    assert set(details["outputs"]) == {"model"} and set(details["record"]["inputs"]) == {"prepared"}
    text = pipeline.cli("step", "show", keys["train"])
    assert text.returncode == 0 and "helpers.py" in text.stdout and keys["train"] in text.stdout
    missing = pipeline.cli("step", "show", "0" * 32)
    assert missing.returncode == 3 and "no stored step result" in missing.stderr


def test_what_changed_decides_what_runs_again(pipeline: Pipeline) -> None:
    project = pipeline.project
    assert pipeline.run()[0] == dict.fromkeys(ALL, "ran")

    project.write("src/train/helpers.py", "SCALE = 4\n")              # train imports it
    statuses, started, _ = pipeline.run()
    assert statuses == {"prepare": "reused", "train": "ran", "evaluate": "ran"}
    assert started == Counter(["train", "evaluate"])

    project.write("src/train/notes.txt", "edited, but .amlignore excludes it\n")
    statuses, started, _ = pipeline.run()
    assert statuses == dict.fromkeys(ALL, "reused") and started == Counter()

    # .gitignore lists scratch.txt, but .amlignore exists and wins: it is in the snapshot. Train
    # runs again; it writes the same model, so evaluate (keyed by content) is reused.
    project.write("src/train/scratch.txt", "edited; only .gitignore excludes it\n")
    statuses, started, _ = pipeline.run()
    assert statuses == {"prepare": "reused", "train": "ran", "evaluate": "reused"}
    assert started == Counter(["train"])

    raw = project.root / "data/raw.csv"
    os.utime(raw, (time.time() + 5, time.time() + 5))                 # a touch: same content
    statuses, started, _ = pipeline.run()
    assert statuses == dict.fromkeys(ALL, "reused") and started == Counter()

    project.write("data/raw.csv", raw.read_text() + "7\n")           # new content: from prepare on
    statuses, started, _ = pipeline.run()
    assert statuses == dict.fromkeys(ALL, "ran") and started == Counter(ALL)


def test_allow_reuse_false_and_regenerate_outputs(pipeline: Pipeline) -> None:
    project = pipeline.project
    assert pipeline.run()[0] == dict.fromkeys(ALL, "ran")
    text = (project.root / "pipeline.yml").read_text()
    project.write("pipeline.yml", text.replace("    outputs: [prepared]\n",
                                               "    outputs: [prepared]\n    allow_reuse: false\n"))
    statuses, started, _ = pipeline.run()
    # prepare always runs; its output bytes are the same, so what reads it is reused.
    assert statuses == {"prepare": "ran", "train": "reused", "evaluate": "reused"}
    assert started == Counter(["prepare"])
    statuses, started, _ = pipeline.run("--regenerate-outputs")
    assert statuses == dict.fromkeys(ALL, "ran") and started == Counter(ALL)


def test_a_failing_step_stops_the_rest_and_is_not_stored(pipeline: Pipeline) -> None:
    project = pipeline.project
    project.write("src/train/helpers.py", "raise RuntimeError('the helper is broken on purpose')\n")
    statuses, started, answer = pipeline.run(expect=1)
    assert statuses == {"prepare": "ran", "train": "failed", "evaluate": "skipped"}
    assert started == Counter(["prepare", "train"])
    train = next(step for step in answer["report"]["steps"] if step["name"] == "train")
    assert "exit status 1" in train["error"] and "broken on purpose" in train["log_tail"]
    assert "broken on purpose" in answer["stderr"]
    assert pipeline.cli("step", "show", train["key"]).returncode == 3
    # Without --json the steps' output streams to stderr as it comes, each line named by its step.
    again = pipeline.cli("pipeline", "run", str(project.root / "pipeline.yml"))
    assert again.returncode == 1
    assert "  | train | RuntimeError: the helper is broken on purpose" in again.stderr
    assert [line.split()[:2] for line in again.stdout.splitlines()[1:]] == [["prepare", "reused"], ["train", "failed"],
                                                                          ["evaluate", "skipped"]]
    # Fixed: train and evaluate run, prepare is reused.
    project.write("src/train/helpers.py", "SCALE = 3\n")
    assert pipeline.run()[0] == {"prepare": "reused", "train": "ran", "evaluate": "ran"}


def test_the_azure_named_python_api_runs_on_the_daemon_with_the_same_keys(pipeline: Pipeline,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(pipeline.project.root)                          # Azure: relative paths from here
    workspace = DaemonWorkspace(pipeline.daemon.url)
    raw = Dataset.File.from_files("data/raw.csv").as_named_input("raw")
    prepared, model, metrics = PipelineData("prepared"), PipelineData("model"), PipelineData("metrics")
    steps = [PythonScriptStep(f"{name}.py", name=name, source_directory=f"src/{name}", arguments=[reads, writes],
                              inputs=[reads], outputs=[writes], environment="env.yml", variant="cpu")
             for name, reads, writes in (("prepare", raw, prepared), ("train", prepared, model),
                                         ("evaluate", model, metrics))]
    run = Experiment(workspace, "exp").submit(PipelineDefinition(workspace, [steps[-1]]))  # the rest by closure
    assert run.wait_for_completion(show_output=False) == "Finished"
    assert {step.name: step.status for step in run.get_steps()} == dict.fromkeys(ALL, "ran")
    # The YAML file describes the same steps: the same keys, so the CLI reuses all three.
    statuses, started, _ = pipeline.run()
    assert statuses == dict.fromkeys(ALL, "reused") and started == Counter()


def test_a_step_past_its_time_limit_fails_and_its_container_goes(dockerd: Dockerd, python_base_docker: dict[str, str],
                                                                  tmp_path: Path) -> None:
    (tmp_path / "envcache.toml").write_text(f'[build]\nengine = "docker"\ndocker_host = "{dockerd.host}"\n\n'
                                            '[pipeline]\nstep_timeout = 3\n')
    daemon = start_daemon_process(tmp_path / "data", 0, "--config", str(tmp_path / "envcache.toml"))
    try:
        pipeline = Pipeline(tmp_path / "project", daemon, dockerd, python_base_docker["cpu"])
        pipeline.project.write("src/train/helpers.py", "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n")
        began = time.monotonic()
        statuses, started, answer = pipeline.run(expect=1)
        assert time.monotonic() - began < 50
        assert statuses == {"prepare": "ran", "train": "failed", "evaluate": "skipped"}
        train = answer["report"]["steps"][1]
        assert "stopped after 3s ([pipeline] step_timeout)" in train["error"] and "sleeping" in train["log_tail"]
        left = dockerd.docker("ps", "-aq", "--filter", f"label=envcache.step={train['key']}", text=True).stdout
        assert left.split() == []
    finally:
        daemon.stop()


def test_bad_pipeline_is_exit_2_naming_the_field(pipeline: Pipeline) -> None:
    project = pipeline.project
    project.write("pipeline.yml", PIPELINE_YAML)                      # no environment anywhere
    done = pipeline.cli("pipeline", "run", str(project.root / "pipeline.yml"))
    assert done.returncode == 2 and "steps[0].environment" in done.stderr and "Traceback" not in done.stderr


def _engine_and_image(kind: str, request: pytest.FixtureRequest) -> tuple[Engine, str, Callable[[], list[str]]]:
    """(engine, a busybox image in it, the engine's own list of containers)."""
    if kind == "docker":
        dockerd: Dockerd = request.getfixturevalue("dockerd")
        return (DockerEngine(dockerd.host), request.getfixturevalue("busybox_image"),
                lambda: dockerd.docker("ps", "-aq", text=True).stdout.split())
    buildah: Buildah = request.getfixturevalue("buildah")
    image = load_into_buildah(buildah, request.getfixturevalue("busybox_oci_layout"), "envcache-test/busybox-oci")
    return (BuildahEngine(root=buildah.storage_root, runroot=buildah.run_root, storage_driver=buildah.storage_driver),
            image, lambda: buildah.buildah("containers", "-q", text=True).stdout.split())


@pytest.mark.parametrize("kind", ["docker", "buildah"])
@pytest.mark.parametrize("stop", ["timeout", "cancel"])
async def test_engine_run_mounts_and_removes_its_container_on_timeout_and_cancel(
        kind: str, stop: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    engine, image, containers = _engine_and_image(kind, request)
    before = containers()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x").write_text("data")
    (tmp_path / "out").mkdir()
    try:
        done = await engine.run_mounted(image, ["sh", "-c", "cat /in/x > /out/y; pwd; echo $GREETING written; touch /in/z"],
                                workdir="/out", mounts=[Mount(tmp_path / "in", "/in"),
                                                        Mount(tmp_path / "out", "/out", read_only=False)],
                                env={"GREETING": "hi"}, user=None, network=False, labels={}, log=lambda line: None)
        # stdout and stderr are two streams: their lines may interleave in either order.
        assert done.exit_code == 1 and {"/out", "hi written"} <= set(done.log_tail.splitlines()) \
            and "Read-only" in done.log_tail, done
        assert (tmp_path / "out" / "y").read_text() == "data" and not (tmp_path / "in" / "z").exists()
        assert containers() == before
        running = asyncio.create_task(engine.run_mounted(
            image, ["sleep", "60"], workdir="/", mounts=[], env={}, user=None, network=False, labels={},
            log=lambda line: None, timeout=2 if stop == "timeout" else None))
        if stop == "cancel":
            await asyncio.sleep(2)
            running.cancel()
        with pytest.raises(TimeoutError if stop == "timeout" else asyncio.CancelledError):
            await running
        assert containers() == before
    finally:
        await engine.close()


def test_buildah_smoke_run_then_reuse_without_a_container(buildah: Buildah, python_base_buildah: dict[str, str],
                                                          tmp_path: Path) -> None:
    (tmp_path / "envcache.toml").write_text(
        f'[build]\nengine = "buildah"\nbuildah_root = "{buildah.storage_root}"\n'
        f'buildah_runroot = "{buildah.run_root}"\nbuildah_storage_driver = "{buildah.storage_driver}"\n')
    daemon = start_daemon_process(tmp_path / "data", 0, "--config", str(tmp_path / "envcache.toml"))
    try:
        project = Project(tmp_path / "project", ledger=False)
        project.write("env.yml", json.dumps({"docker": {"base_image": python_base_buildah["cpu"]}}))
        project.write("pipeline.yml", PIPELINE_YAML.replace("steps:\n", "defaults:\n  environment: env.yml\nsteps:\n"))
        command = [sys.executable, "-m", "envcache.cli", "pipeline", "run", str(project.root / "pipeline.yml"),
                   "--json", "--url", daemon.url]
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
        for expected in ("ran", "reused"):
            before = buildah.buildah("containers", "--all", "--json", text=True).stdout
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
            assert done.returncode == 0, done.stdout + done.stderr
            assert [s["status"] for s in json.loads(done.stdout)["report"]["steps"]] == [expected] * 3
        # The reuse run made no working container at all (buildah's own list is unchanged).
        assert buildah.buildah("containers", "--all", "--json", text=True).stdout == before
        key = json.loads(done.stdout)["report"]["steps"][2]["key"]
        fetched = subprocess.run([sys.executable, "-m", "envcache.cli", "step", "outputs", key, str(tmp_path / "out"),
                                  "--url", daemon.url], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert fetched.returncode == 0, fetched.stderr
        assert (tmp_path / "out" / "metrics" / "score.txt").read_text() == "score 36"
    finally:
        daemon.stop()


def test_outputs_are_reused_on_a_second_daemon_through_a_shared_upstream(
        dockerd: Dockerd, python_base_docker: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "upstream.toml").write_text('[build]\nengine = "none"\n')
    shared = start_daemon_process(tmp_path / "shared", 0, "--config", str(tmp_path / "upstream.toml"))
    daemons: list[DaemonProcess] = []
    try:
        for name in ("laptop", "ci"):
            (tmp_path / f"{name}.toml").write_text(
                f'[build]\nengine = "docker"\ndocker_host = "{dockerd.host}"\n\n'
                f'[[upstreams]]\nurl = "{shared.url}"\nprefix = "team"\n')
            daemons.append(start_daemon_process(tmp_path / name, 0, "--config", str(tmp_path / f"{name}.toml")))
        laptop = Pipeline(tmp_path / "project", daemons[0], dockerd, python_base_docker["cpu"])
        statuses, started, answer = laptop.run()
        assert statuses == dict.fromkeys(ALL, "ran") and started == Counter(ALL)
        keys = [step["key"] for step in answer["report"]["steps"]]
        deadline = time.monotonic() + 60                               # pushes run in the background
        while True:
            try:
                with urllib.request.urlopen(f"{shared.url}/v2/team/step/tags/list", timeout=10) as response:
                    tags = json.loads(response.read())["tags"] or []
            except urllib.error.HTTPError:                            # the repository does not exist yet
                tags = []
            if set(keys) <= set(tags):
                break
            assert time.monotonic() < deadline, f"step results not pushed: {tags}"
            time.sleep(0.2)
        laptop.daemon = daemons[1]                                     # the same project, another machine
        statuses, started, answer = laptop.run()
        assert statuses == dict.fromkeys(ALL, "reused") and started == Counter()
        fetched = laptop.cli("step", "outputs", keys[2], str(tmp_path / "out"))
        assert fetched.returncode == 0, fetched.stderr
        assert (tmp_path / "out" / "metrics" / "score.txt").read_text() == f"score {6 * sum(laptop.numbers)}"
    finally:
        for daemon in [*daemons, shared]:
            daemon.stop()
