"""Starting, watching and stopping the processes of a launch plan (mtgrpo launch, see mtgrpo.launch.cli).

Each server and the training command run in a process group of their own, so stopping one reaches every worker it
spawned. On SIGTERM or Ctrl-C training gets a grace period to save a checkpoint (mtgrpo.launch.signals).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .plan import DEFAULT_SERVER_TIMEOUT, TRAIN_STOP_GRACE_SECONDS, Command, LaunchPlan

STOP_GRACE_SECONDS = 30.0
DEFAULT_PEER_TIMEOUT = 60.0


class ServerError(RuntimeError):
    """The vLLM server died or never became healthy."""


def _log_tail(path: str | None, lines: int = 40) -> str:
    if not path or not Path(path).is_file():
        return "(no log)"
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64_000))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def is_healthy(url: str) -> bool:
    # No proxy: an http_proxy set for downloads would otherwise intercept a localhost/cluster address.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_for_server(
    url: str,
    process: subprocess.Popen | None,
    timeout: float,
    log_path: str | None = None,
    poll_interval: float = 1.0,
) -> None:
    """Block until `url` answers 200. Raise ServerError (with the log's last lines) if `process` exits first
    or `timeout` seconds pass. `process` is None when the server runs on another node."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ServerError(
                f"The vLLM server exited with code {process.returncode} before {url} answered. "
                f"Last lines of {log_path}:\n{_log_tail(log_path)}\n"
                "Fix the cause above (model name, GPU memory: lower vllm_gpu_memory_utilization or "
                "vllm_max_model_length, vLLM version: `mtgrpo doctor --config RECIPE`) and launch again."
            )
        if is_healthy(url):
            return
        if time.monotonic() > deadline:
            where = f"Last lines of {log_path}:\n{_log_tail(log_path)}\n" if process is not None else ""
            raise ServerError(
                f"The vLLM server did not answer {url} within {timeout:.0f} s. {where}"
                "Raise --server-timeout if it is still loading, or check that the main node started it and "
                "that the port is reachable from this node."
            )
        time.sleep(poll_interval)


def _start(command: Command, log_path: str | None = None) -> subprocess.Popen:
    # A new session makes the process the leader of its own group, so stopping it reaches every worker it
    # spawned (vLLM engine cores, torchrun ranks), and a terminal Ctrl-C reaches only us, who forward it.
    output = None
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        output = open(log_path, "ab")
    return subprocess.Popen(
        command.argv,
        env={**os.environ, **command.env},
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
        start_new_session=True,
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_process_group(
    process: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_SECONDS
) -> None:
    """Send `sig` to the process's whole group, wait up to `grace` seconds, then SIGKILL what is left."""
    if process is None:
        return
    pgid = process.pid
    if _group_alive(pgid):
        os.killpg(pgid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or it stays in the group as a zombie
        if not _group_alive(pgid):
            break
        time.sleep(0.2)
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


class _Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, _frame):
    raise _Interrupted(signum)


def exit_status(returncode: int) -> int:
    """A child's exit code as a shell reports it: 128 + N for a child killed by signal N (Popen says -N)."""
    return 128 - returncode if returncode < 0 else returncode


def reachable(address: str, timeout: float = 5.0) -> bool:
    """Whether `host:port` accepts a TCP connection."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


class PeerWatch:
    """Tracks whether the main node is alive: armed by its first answer, then lost after `timeout` seconds of
    silence. A node only learns of its peer's death from NCCL after 30 minutes otherwise."""

    def __init__(self, address: str, timeout: float):
        self.address, self.timeout = address, timeout
        self.seen = False
        self.last_seen = time.monotonic()

    def lost(self) -> bool:
        now = time.monotonic()
        if reachable(self.address, timeout=min(5.0, self.timeout)):
            self.seen, self.last_seen = True, now
            return False
        return self.seen and now - self.last_seen > self.timeout


def _wait_for_peer(address: str, timeout: float, poll_interval: float) -> None:
    deadline = time.monotonic() + timeout
    while not reachable(address):
        if time.monotonic() > deadline:
            raise ServerError(
                f"The main node's rendezvous {address} did not answer within {timeout:.0f} s. Start the main node "
                "(--node-rank 0) too, check --main-address/--main-port and that the port is open between nodes, "
                "or raise --server-timeout."
            )
        time.sleep(poll_interval)


def execute(
    plan: LaunchPlan,
    server_timeout: float = DEFAULT_SERVER_TIMEOUT,
    peer_timeout: float = DEFAULT_PEER_TIMEOUT,
    stop_grace: float = TRAIN_STOP_GRACE_SECONDS,
    poll_interval: float = 5.0,
) -> int:
    """Run a plan: server, health wait, training. Returns training's exit code (128 + N when it or the launcher
    got signal N, 1 when the vLLM server or the main node died). The server's process group is always stopped
    before returning; on a signal, training gets `stop_grace` seconds to save a checkpoint first."""
    server = training = feedback_server = None
    forwarded = signal.SIGTERM
    grace = stop_grace
    watch = PeerWatch(plan.peer, peer_timeout) if plan.peer else None
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if plan.server:
            print(f"[mtgrpo launch] starting vLLM server, log: {plan.server_log}", flush=True)
            server = _start(plan.server, plan.server_log)
        if plan.feedback_server:
            print(f"[mtgrpo launch] starting the feedback model's vLLM server, log: {plan.feedback_server_log}")
            feedback_server = _start(plan.feedback_server, plan.feedback_server_log)
        if plan.health_url:
            wait_for_server(plan.health_url, server, server_timeout, plan.server_log)
            print(f"[mtgrpo launch] vLLM server healthy at {plan.health_url}", flush=True)
        if plan.feedback_health_url:
            wait_for_server(plan.feedback_health_url, feedback_server, server_timeout, plan.feedback_server_log)
            print(f"[mtgrpo launch] feedback model server healthy at {plan.feedback_health_url}", flush=True)
        if plan.train is not None:
            if plan.peer:
                _wait_for_peer(plan.peer, server_timeout, min(poll_interval, 1.0))
            print(f"[mtgrpo launch] {plan.train.shell()}", flush=True)
            training = _start(plan.train)
        status, grace = _supervise(plan, server, feedback_server, training, watch, poll_interval, grace)
        return status
    except _Interrupted as interrupted:
        forwarded = interrupted.signum
        print(
            f"[mtgrpo launch] got {signal.Signals(forwarded).name}, stopping training (up to {stop_grace:.0f} s to "
            "save a checkpoint) and vLLM",
            file=sys.stderr,
            flush=True,
        )
        return 128 + forwarded
    except ServerError as error:
        print(f"[mtgrpo launch] {error}", file=sys.stderr)
        return 1
    finally:
        # Cleanup is bounded (grace + SIGKILL); a second Ctrl-C must not abandon the children half-way. The
        # server stays up until training has stopped: the step being finished may still need rollouts.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        stop_process_group(training, forwarded, grace=grace)
        stop_process_group(server, grace=STOP_GRACE_SECONDS if training is None else 10.0)
        stop_process_group(feedback_server, grace=10.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(plan, server, feedback_server, training, watch, poll_interval, grace) -> tuple[int, float]:
    """Wait for training to end while the servers and the main node stay alive: (exit status, stop grace)."""
    while True:
        if training is not None:
            try:
                return exit_status(training.wait(timeout=poll_interval)), grace
            except subprocess.TimeoutExpired:
                pass
        elif server is not None:
            try:
                server.wait(timeout=poll_interval)
            except subprocess.TimeoutExpired:
                pass
        if server is not None and server.poll() is not None:
            raise ServerError(
                f"The vLLM server exited with code {server.returncode} during training. "
                f"Last lines of {plan.server_log}:\n{_log_tail(plan.server_log)}"
            )
        if feedback_server is not None and feedback_server.poll() is not None:
            raise ServerError(
                f"The feedback model's vLLM server exited with code {feedback_server.returncode} during "
                f"training. Last lines of {plan.feedback_server_log}:\n{_log_tail(plan.feedback_server_log)}"
            )
        if watch is not None and watch.lost():
            if training is None:
                print(f"[mtgrpo launch] training nodes ({plan.peer}) are gone; stopping vLLM", flush=True)
                return 0, grace
            print(
                f"[mtgrpo launch] the main node's rendezvous {plan.peer} has not answered for "
                f"{watch.timeout:.0f} s: the main node (rank 0) has stopped or died; see its logs. Stopping this "
                "node now instead of waiting for the NCCL timeout (30 min).",
                file=sys.stderr,
                flush=True,
            )
            # A checkpoint save would wait on the dead node's collectives: do not wait for it.
            return 1, 10.0
