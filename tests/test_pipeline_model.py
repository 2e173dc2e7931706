"""The pipeline model from YAML and from the Azure-named Python API; the step key's golden vectors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import xxhash

from envcache.errors import InvalidInput
from envcache.pipeline import (
    STEP_KEY_VERSION, Dataset, Experiment, OutputFileDatasetConfig, Pipeline, PipelineData, PipelineDefinitionError,
    PipelineFailed, PythonScriptStep, load_pipeline, step_key,
)
from tests.fixtures.pipelines import HostBackend, Project

KEY_ARGS = dict(image_key="0123456789abcdef0123456789abcdef", variant="cpu", snapshot="sha256:" + "ab" * 32,
                script_name="train.py", arguments=["${{inputs.data}}", "--epochs", "3"],
                inputs={"data": "sha256:" + "cd" * 32}, outputs=["model"], version=None)


KEY_PAYLOAD = ('{"arguments":["${{inputs.data}}","--epochs","3"],"image_key":"0123456789abcdef0123456789abcdef",'
               f'"inputs":[["data","sha256:{"cd" * 32}"]],"outputs":["model"],"script_name":"train.py",'
               f'"snapshot":"sha256:{"ab" * 32}","step_key_version":1,"variant":"cpu","version":null}}')


def test_step_key_golden_vector() -> None:
    """A changed key silently misses every stored step result: bump STEP_KEY_VERSION if intended."""
    assert STEP_KEY_VERSION == 1
    assert step_key(**KEY_ARGS) == xxhash.xxh3_128_hexdigest(KEY_PAYLOAD.encode()) == "85f672ae1dc07ce7730122e50d1ee4a4"


@pytest.mark.parametrize("change", [
    {"image_key": "f" * 32}, {"variant": "gpu"}, {"snapshot": "sha256:" + "00" * 32}, {"script_name": "t.py"},
    {"arguments": ["--epochs", "3", "${{inputs.data}}"]}, {"inputs": {"data": "sha256:" + "00" * 32}},
    {"inputs": {"other": "sha256:" + "cd" * 32}}, {"outputs": ["weights"]}, {"version": "2"},
])
def test_every_part_of_the_key_counts(change: dict) -> None:
    assert step_key(**{**KEY_ARGS, **change}) != step_key(**KEY_ARGS)


def test_input_and_output_order_do_not_count() -> None:
    two = {**KEY_ARGS, "inputs": {"a": "sha256:1", "b": "sha256:2"}, "outputs": ["x", "y"]}
    swapped = {**KEY_ARGS, "inputs": {"b": "sha256:2", "a": "sha256:1"}, "outputs": ["y", "x"]}
    assert step_key(**two) == step_key(**swapped)


def write(root: Path, text: str) -> Path:
    (root / "src").mkdir(parents=True, exist_ok=True)
    for script in ("a.py", "b.py"):
        (root / "src" / script).write_text("")
    (root / "raw.csv").write_text("1\n")
    path = root / "p.yml"
    path.write_text(textwrap.dedent(text))
    return path


BAD = [
    ("steps:\n  - script_name: a.py\n    source_directory: src\n    colour: red\n",
     "line 4", r"steps\[0\]\.colour: unknown field; valid fields: name, script_name"),
    ("steps:\n  - name: x\n    source_directory: src\n", "line 2", r"steps\[0\]: script_name is required"),
    ("steps:\n  - script_name: missing.py\n    source_directory: src\n",
     "line 2", r"steps\[0\]\.script_name: missing\.py is not a file in"),
    ("steps:\n  - script_name: ../a.py\n", "line 2", r"must be a path inside the source directory"),
    ("defaults: {source_directory: src}\nsteps:\n  - script_name: a.py\n    inputs: {d: {output: nope}}\n",
     "line 4", r"steps\[0\]\.inputs\.d\.output: no step has an output named 'nope' \(outputs: none\)"),
    ("defaults: {source_directory: src}\nsteps:\n  - {script_name: a.py, outputs: [o]}\n"
     "  - {script_name: b.py, outputs: [o]}\n", "line 4", r"output 'o' is also an output of step 'a\.py'"),
    ("defaults: {source_directory: src}\nsteps:\n  - {name: s, script_name: a.py}\n  - {name: s, script_name: b.py}\n",
     "line 4", r"steps\[1\]\.name: duplicate step name 's' \(also steps\[0\]\)"),
    ("defaults: {source_directory: src}\nsteps:\n"
     "  - {name: a, script_name: a.py, inputs: {i: {output: ob}}, outputs: [oa]}\n"
     "  - {name: b, script_name: b.py, inputs: {i: {output: oa}}, outputs: [ob]}\n",
     "line 2", r"steps: the steps form a cycle: a → b → a"),
    ("defaults: {source_directory: src}\nsteps:\n  - {name: a, script_name: a.py, inputs: {i: {output: o}}, outputs: [o]}\n",
     "line 2", r"the steps form a cycle: a → a"),
    ("defaults: {source_directory: src}\nsteps:\n  - script_name: a.py\n    arguments: ['${{inputs.raw}}']\n",
     "line 4", r"steps\[0\]\.arguments\[0\]: \$\{\{inputs\.raw\}\} names no declared input \(inputs: none\)"),
    ("defaults: {source_directory: src}\nsteps:\n  - script_name: a.py\n    arguments: [true]\n",
     "line 4", r"arguments\[0\]: expected a string or a number, got a boolean"),
    ("defaults: {source_directory: src, variant: tpu}\nsteps:\n  - script_name: a.py\n",
     "line 1", r"defaults\.variant: expected one of cpu, gpu, auto, got 'tpu'"),
    ("defaults: {source_directory: src}\nsteps:\n  - script_name: a.py\n    inputs: {raw: nope.csv}\n",
     "line 4", r"steps\[0\]\.inputs\.raw: no such file or directory"),
    ("defaults: {source_directory: src}\nsteps:\n  - script_name: a.py\n    outputs: [ok, 2bad]\n",
     "line 4", r"outputs\[1\]: an output name must be letters, digits and underscores"),
    ("steps: []\n", "line 1", r"steps: expected a non-empty list of steps"),
    ("steps:\n  - script_name: a.py\n  bad indent\n", "line 4, column 1", r"invalid YAML"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD)
def test_bad_pipeline_files_name_the_field_and_line(tmp_path: Path, text: str, line: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidInput, match=message) as caught:
        load_pipeline(path)
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith(f"{path}: {line}")


def test_steps_are_ordered_by_data_flow_and_placeholders_normalised(tmp_path: Path) -> None:
    path = write(tmp_path, """
        defaults: {source_directory: src, environment: env.yml}
        steps:
          - name: second
            script_name: b.py
            arguments: ["${{ inputs.x }}", 3, 0.5, "--out=${{outputs.y}}"]
            inputs: {x: {output: first_out}}
            outputs: [y]
            version: 2
            compute_target: cpu-cluster
            hash_paths: [b.py]
          - {name: first, script_name: a.py, outputs: [first_out], inputs: {raw: {path: raw.csv}}}
    """)
    model = load_pipeline(path)
    assert [s.name for s in model.steps] == ["first", "second"]
    second = model.steps[1]
    assert second.arguments == ("${{inputs.x}}", "3", "0.5", "--out=${{outputs.y}}")
    assert second.argv({"x": "/in/x"}, {"y": "/out/y"}) == ["/in/x", "3", "0.5", "--out=/out/y"]
    assert (second.environment, second.version, second.compute_target, second.hash_paths) == \
        ("env.yml", "2", "cpu-cluster", ("b.py",))
    assert model.upstream(second) == ("first",)
    assert model.steps[0].inputs[0].path == tmp_path / "raw.csv"


def azure_steps() -> tuple[PythonScriptStep, PythonScriptStep, PythonScriptStep]:
    """The fixture project's pipeline, written against the Azure-named API."""
    raw = Dataset.File.from_files("data/raw.csv").as_named_input("raw").as_mount()
    prepared, model, metrics = PipelineData("prepared"), OutputFileDatasetConfig("model"), PipelineData("metrics")
    prepare = PythonScriptStep("prepare.py", name="prepare", source_directory="src/prepare",
                               arguments=[raw, prepared], inputs=[raw], outputs=[prepared])
    train = PythonScriptStep("train.py", name="train", source_directory="src/train", arguments=[prepared, model],
                             inputs=[prepared], outputs=[model], compute_target="gpu-cluster", hash_paths=["x"])
    evaluate = PythonScriptStep(script_name="evaluate.py", name="evaluate", source_directory="src/evaluate",
                                arguments=[model, metrics], inputs=[model], outputs=[metrics])
    return prepare, train, evaluate


def test_the_python_api_builds_the_same_model_as_the_yaml(project: Project, backend: HostBackend,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project.root)
    prepare, train, evaluate = azure_steps()
    from_python = Pipeline(backend, [evaluate]).validate()    # resolve_closure brings prepare and train
    from_yaml = project.model()
    assert [s.name for s in from_python.steps] == ["prepare", "train", "evaluate"]
    for ours, theirs in zip(from_python.steps, from_yaml.steps, strict=True):
        assert (ours.arguments, ours.inputs, ours.outputs, ours.source_directory) == \
            (theirs.arguments, theirs.inputs, theirs.outputs, theirs.source_directory)
    with pytest.raises(PipelineDefinitionError, match=r"Pipeline: step 'evaluate': .*no step has an output named 'model'"):
        Pipeline(backend, [evaluate], resolve_closure=False).validate()


def test_submit_and_wait_for_completion(project: Project, backend: HostBackend, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(project.root)
    steps = list(azure_steps())
    run = Pipeline(backend, steps).submit("exp")
    assert run.wait_for_completion() == "Finished"
    assert project.ran() == ["prepare", "train", "evaluate"]
    assert "train: ran" in capsys.readouterr().out
    again = Experiment(backend, "exp").submit(Pipeline(backend, steps))
    assert again.wait_for_completion(show_output=False) == "Finished"
    assert [s.status for s in again.get_steps()] == ["reused"] * 3 and project.ran() == []
    forced = Experiment(backend, "exp").submit(Pipeline(backend, steps), regenerate_outputs=True)
    forced.wait_for_completion(show_output=False)
    assert [s.key for s in forced.get_steps()] == [s.key for s in again.get_steps()]
    assert project.ran() == ["prepare", "train", "evaluate"]

    project.write("src/evaluate/evaluate.py", "raise SystemExit('evaluation broke')\n")
    failing = Pipeline(backend, steps).submit("exp")
    with pytest.raises(PipelineFailed, match=r"(?s)step 'evaluate' failed: exit status 1.*evaluation broke"):
        failing.wait_for_completion(show_output=False)
    assert failing.get_status() == "Failed"


def test_python_api_mistakes_are_named(tmp_path: Path) -> None:
    data = PipelineData("d")
    with pytest.raises(PipelineDefinitionError, match="params is not supported"):
        PythonScriptStep("a.py", params={"x": 1})
    with pytest.raises(PipelineDefinitionError, match=r"PipelineData\('d'\) is neither in inputs nor in outputs"):
        PythonScriptStep("a.py", arguments=[data])
    PythonScriptStep("a.py", name="one", outputs=[data])
    with pytest.raises(PipelineDefinitionError, match="output 'd' is already an output of step 'one'"):
        PythonScriptStep("b.py", name="two", outputs=[data])
