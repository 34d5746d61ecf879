"""Save a complete checkpoint when the run is told to stop (SIGTERM), then exit with 128 + SIGTERM.

    trainer.add_callback(SaveOnSigterm())    # mtgrpo.train does this for every run

SageMaker sends SIGTERM 120 s before SIGKILL when a job is stopped or a spot instance is reclaimed; `docker stop`,
Kubernetes and Slurm's preemption do the same. The handler only sets a flag: the Trainer finishes the step it is
in, and at the step's end every process saves (`control.should_save`) and stops (`control.should_training_stop`),
so an interruption loses at most the current step. In a multi-process run the flag is OR-reduced across ranks at
each step end, so that all ranks enter DeepSpeed's collective save at the same step even when the signal reached
them at different moments. After the save, training ends with SystemExit(143) rather than a normal return, so
that the launchers do not take a stopped run for a finished one (and export or overwrite the final model).
"""

from __future__ import annotations

import logging
import signal
import time

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class SaveOnSigterm(TrainerCallback):
    """On SIGTERM: save a checkpoint at the end of the current step, stop, and exit with status 143."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        self.received_at: float | None = None
        self.stopped = False
        self._previous = None

    def _handle(self, signum, _frame):
        if self.received_at is None:
            self.received_at = time.monotonic()
            # The logging module takes locks; a handler must not log. print to stderr is enough here.
            print(
                f"[mtgrpo] got {signal.Signals(signum).name}: saving a checkpoint at the end of this step",
                flush=True,
            )

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = signal.signal(self.signum, self._handle)

    def _agreed(self, args) -> bool:
        import torch
        import torch.distributed as dist

        flag = self.received_at is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            tensor = torch.tensor([int(flag)], device=args.device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            flag = bool(tensor.item())
        return flag

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed(args):
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.stopped:
            waited = time.monotonic() - self.received_at if self.received_at is not None else 0.0
            logger.warning(
                "Saved checkpoint-%d %.0f s after the stop signal; stopping.", state.global_step, waited
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
        if self.stopped:
            raise SystemExit(128 + self.signum)
