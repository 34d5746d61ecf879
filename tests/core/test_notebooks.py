"""The notebooks run top to bottom (nbclient) with tiny parameters injected after their `parameters` cell."""

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ["local_training.ipynb", "launch_sagemaker_job.ipynb", "evaluate.ipynb"]


def execute(name: str, parameters: dict) -> nbformat.NotebookNode:
    """Run a notebook as papermill does: a cell assigning `parameters` goes right after the `parameters` cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    (index,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return nb


def _output_text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"clear the outputs of {name}"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


def test_readme_lists_every_notebook():
    readme = (NOTEBOOKS / "README.md").read_text()
    assert all(f"[{name}]({name})" in readme for name in NAMES)


@pytest.mark.slow
def test_local_training_notebook(tmp_path):
    run = tmp_path / "run"
    nb = execute("local_training.ipynb", {
        "output_dir": str(run), "max_steps": 1, "eval_limit": 4,
        "train_overrides": ["--per_device_train_batch_size", "2", "--num_generations", "2",
                            "--max_completion_length", "8"],
    })  # fmt: skip
    assert (run / "model.safetensors").is_file() and (run / "results.json").is_file()
    assert json.loads((run / "results.json").read_text())["num_problems"] == 4
    for png in ("training_curves.png", "eval_accuracy.png", "before_after.png"):
        assert (run / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    assert "turns/1/accuracy" in _output_text(nb)


@pytest.mark.slow
@pytest.mark.aws
def test_sagemaker_notebook_under_moto(tmp_path, monkeypatch, tiny_model_dir):
    pytest.importorskip("moto")
    pytest.importorskip("sagemaker")
    monkeypatch.setenv("MTGRPO_NOTEBOOK_MOCK_AWS", "1")
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    nb = execute("launch_sagemaker_job.ipynb", {
        "recipe": "tests/fixtures/recipes/gpu-server.yaml", "poll_seconds": 0, "eval_limit": 2,
        "download_dir": str(tmp_path), "mock_model": str(tiny_model_dir),
    })  # fmt: skip
    text = _output_text(nb)
    assert "moto mock" in text and "submitted mtgrpo-" in text and "Completed" in text
    (model_dir,) = tmp_path.glob("*/model")
    assert (model_dir / "config.json").is_file()
    assert json.loads((model_dir / "results.json").read_text())["num_problems"] == 2


@pytest.mark.slow
def test_evaluate_notebook_compares_runs(tmp_path, tiny_model_dir):
    import shutil

    # A "trained run": the tiny model plus a logged history, so the notebook also draws training curves.
    run = tmp_path / "tiny-run"
    shutil.copytree(tiny_model_dir, run)
    (run / "log_history.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "reward": 0.1 * s, "turns/1/accuracy": 0.2, "turns/final/accuracy": 0.3})
            + "\n"
            for s in (1, 2)
        )  # fmt: skip
    )
    out = tmp_path / "eval"
    nb = execute("evaluate.ipynb", {
        "models": {"base": "smollm2-135m-instruct", "tiny": str(run), "missing": str(tmp_path / "no" / "such-run")},
        "limit": 2, "output_root": str(out),
    })  # fmt: skip
    assert (out / "base" / "results.json").is_file() and (out / "tiny" / "results.json").is_file()
    assert (out / "compare_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "compare_training.png").read_bytes()[:4] == b"\x89PNG"
    text = _output_text(nb)
    assert "skipping missing" in text and "base: no training history" in text
