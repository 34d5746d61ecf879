"""SIGTERM (SageMaker stop, spot reclaim) with real processes and real signals: the SageMaker command chain
delivers it, the launcher forwards it, a real transformers Trainer saves a complete checkpoint at the end of
the current step and exits 143; and a child killed by a signal reports 128 + N. Nothing is mocked."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mtgrpo.launch.checkpoints import latest_checkpoint
from mtgrpo.launch.plan import Command, LaunchPlan
from mtgrpo.launch.processes import execute

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

# A real Trainer on a tiny torch model; each step is slowed down so the signal lands mid-run. It records the
# step it reached (for the test to signal at the right time) and the exit status SaveOnSigterm asks for.
TRAIN = textwrap.dedent(
    """
    import os, sys, time
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from mtgrpo.launch.signals import SaveOnSigterm

    out, marker = sys.argv[1], sys.argv[2]

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 1)

        def forward(self, x, labels):
            return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}

    class Slow(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            with open(marker, "w") as f:
                f.write(f"{os.getpid()} {state.global_step}")
            time.sleep(0.3)

    data = [{"x": torch.randn(4), "labels": torch.tensor(1.0)} for _ in range(4096)]
    args = TrainingArguments(out, per_device_train_batch_size=2, max_steps=2000, save_strategy="no", use_cpu=True,
                             report_to="none", logging_steps=1000, disable_tqdm=True)
    trainer = Trainer(model=Tiny(), args=args, train_dataset=data, callbacks=[Slow(), SaveOnSigterm()])
    try:
        trainer.train()
        trainer.save_model(out)  # as mtgrpo.train does after a finished run
    except SystemExit as stop:
        with open(marker + ".rc", "w") as f:
            f.write(str(stop.code))
        raise
    """
)


def _wait_for_step(marker: Path, step: int, within: float = 60.0) -> int:
    deadline = time.monotonic() + within
    while True:
        text = marker.read_text().split() if marker.is_file() else []
        if len(text) == 2 and int(text[1]) >= step:
            return int(text[0])
        assert time.monotonic() < deadline, "training never reached the step"
        time.sleep(0.1)


@pytest.mark.slow
def test_sigterm_to_the_launcher_saves_a_complete_checkpoint_and_exits_143(tmp_path):
    script, out, marker = tmp_path / "train_tiny.py", tmp_path / "out", tmp_path / "step"
    script.write_text(TRAIN)
    runner = textwrap.dedent(
        f"""
        import sys
        from mtgrpo.launch.plan import Command, LaunchPlan
        from mtgrpo.launch.processes import execute
        plan = LaunchPlan(train=Command([sys.executable, {str(script)!r}, {str(out)!r}, {str(marker)!r}]))
        sys.exit(execute(plan, poll_interval=0.5))
        """
    )
    launcher = subprocess.Popen([sys.executable, "-c", runner], cwd=REPO, env=ENV)
    try:
        _wait_for_step(marker, 3)
        sent = time.monotonic()
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 128 + signal.SIGTERM
        assert time.monotonic() - sent < 30  # well inside SageMaker's 120 s
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert (tmp_path / "step.rc").read_text() == "143"  # the training process itself said "stopped"
    checkpoint = latest_checkpoint(out)
    assert checkpoint, sorted(p.name for p in out.rglob("*"))
    step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
    assert 3 <= step < 2000
    assert not (out / "model.safetensors").exists()  # a stopped run is not exported as a finished one


def test_child_killed_by_a_signal_exits_128_plus_n():
    plan = LaunchPlan(
        train=Command([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    )
    assert execute(plan, poll_interval=0.5) == 128 + signal.SIGKILL


def test_sagemaker_command_chain_delivers_sigterm(tmp_path):
    """The real sm_train.sh tail the SageMaker SDK generates, run by bash exactly as the container runs it
    (`bash -c "chmod ... && sm_train.sh"`), with `python` on PATH replaced by a stand-in that records SIGTERM."""
    pytest.importorskip("sagemaker")
    from sagemaker.train.templates import EXECUTE_BASE_COMMANDS

    sys.path.insert(0, str(REPO / "sagemaker_training"))
    try:
        import launch
    finally:
        sys.path.remove(str(REPO / "sagemaker_training"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    got = tmp_path / "got-sigterm"
    stand_in = bin_dir / "python"
    stand_in.write_text(
        f"#!{sys.executable}\n"
        "import os, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (open({str(got)!r}, 'w').write('yes'), sys.exit(143)))\n"
        f"open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )
    stand_in.chmod(0o755)
    script = tmp_path / "sm_train.sh"
    script.write_text("#!/bin/bash\nset -e\n" + EXECUTE_BASE_COMMANDS.format(base_command=launch.ENTRY_POINT))
    script.chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    container = subprocess.Popen(["/bin/bash", "-c", f"chmod +x {script} && {script}"], env=env)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "pid").is_file():
            assert time.monotonic() < deadline and container.poll() is None
            time.sleep(0.05)
        container.send_signal(signal.SIGTERM)  # what `docker stop` sends to the container's first process
        container.wait(timeout=30)
    finally:
        if container.poll() is None:
            container.kill()
        pid = int((tmp_path / "pid").read_text())
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert got.is_file(), "SIGTERM never reached the entry point: the command chain must exec"
    assert container.returncode == 143
