"""One cgroup per sandboxed run, where the machine lets the trainer make them (root, a writable cgroup tree).

    cg = RunCgroup.create("run-id", memory_bytes=..., max_tasks=..., cpus=1.0)   # None where unavailable
    ... the launcher writes its pid into each of cg.procs_files ...
    cg.kill(); cg.oom_killed(); cg.cpu_seconds(); cg.remove()

What a cgroup adds to the rlimits (docs/code_sandbox.md): memory counted for everything the run creates
(every process, System V and POSIX shared memory, memfds, tmpfs pages, pipe and socket buffers charged to it),
one task budget for the whole run, at most ``cpus`` CPUs for all its processes together (a run that forks
spinning children gets no more CPU than one that does not, so it cannot starve its neighbours in the batch),
and a list of every process in it, ``setsid()`` or not, for the final kill.

cgroup v2 (one unified tree) and v1 (one tree per controller) are both handled. v2 needs the controllers
enabled for children of the trainer's own cgroup, which the kernel refuses when that cgroup holds processes
and is not the root ("no internal processes"): then ``available()`` says why and the sandbox runs without.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_PARENT = "mtgrpo-sandbox"  # under the trainer's own cgroup
_PERIOD_US = 100_000
_STALE_S = 3600  # a run cgroup this old is left over from a trainer that died (runs last seconds)


def _mounts() -> dict[str, str]:
    """{"v2": mount point} and/or {controller: mount point} of the v1 hierarchies."""
    found = {}
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        point = fields[4].replace("\\040", " ")
        if tail[0] == "cgroup2":
            found.setdefault("v2", point)
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                if option in ("memory", "pids", "cpu", "cpuacct"):
                    found.setdefault(option, point)
    return found


def _own_paths() -> dict[str, str]:
    """The trainer's own cgroup per controller ("" key: the v2 path)."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    return paths


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@functools.lru_cache(maxsize=1)
def available() -> tuple[str, str]:
    """("v1" | "v2", "") where per-run cgroups can be made here, else ("", why not)."""
    if os.environ.get("MTGRPO_SANDBOX_CGROUPS", "auto") == "off":
        return "", "MTGRPO_SANDBOX_CGROUPS=off"
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError as err:
        return "", f"cannot read the process's cgroups: {err}"
    v1 = {c: os.path.join(mounts[c], own.get(c, "/").lstrip("/"), _PARENT) for c in ("memory", "pids", "cpu")
          if c in mounts}  # fmt: skip
    if len(v1) == 3:
        if "cpuacct" in mounts:
            v1["cpuacct"] = os.path.join(mounts["cpuacct"], own.get("cpuacct", "/").lstrip("/"), _PARENT)
        try:
            for path in v1.values():
                os.makedirs(path, exist_ok=True)
            # The runs share one parent group: give it the weight of the processes it replaces (one per worker),
            # not that of a single process, against the rest of the machine.
            _try_write(os.path.join(v1["cpu"], "cpu.shares"), str(1024 * _workers()))
        except OSError as err:
            return "", f"cgroup v1: cannot create {path}: {err}"
        _V1_PARENTS.update(v1)
        _remove_stale(v1.values())
        return "v1", ""
    if "v2" in mounts and "" in own:
        base = os.path.join(mounts["v2"], own[""].lstrip("/"))
        parent = os.path.join(base, _PARENT)
        try:
            with open(os.path.join(base, "cgroup.controllers")) as f:
                controllers = set(f.read().split())
            missing = {"memory", "pids", "cpu"} - controllers
            if missing:
                return "", f"cgroup v2: controllers {sorted(missing)} are not available in {base}"
            _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids +cpu")
            os.makedirs(parent, exist_ok=True)
            _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids +cpu")
            _try_write(os.path.join(parent, "cpu.weight"), str(min(10_000, 100 * _workers())))
        except OSError as err:
            return "", f"cgroup v2: cannot enable controllers under {base}: {err}"
        _V2_PARENT.append(parent)
        _remove_stale([parent])
        return "v2", ""
    return "", "no writable cgroup hierarchy with the memory, pids and cpu controllers"


def _remove_stale(parents) -> None:
    """Empty run cgroups a trainer that died mid-run left behind (rmdir fails, harmlessly, on busy ones)."""
    for parent in parents:
        try:
            names = [n for n in os.listdir(parent) if n.startswith("run-")]
        except OSError:
            continue
        for name in names:
            path = os.path.join(parent, name)
            try:
                # Only old ones: another trainer process (another rank) may have just made this one.
                if time.time() - os.stat(path).st_mtime > _STALE_S:
                    os.rmdir(path)
            except OSError:
                pass


def _workers() -> int:
    try:
        return 2 * len(os.sched_getaffinity(0))
    except AttributeError:
        return 2 * (os.cpu_count() or 1)


_V1_PARENTS: dict[str, str] = {}
_V2_PARENT: list[str] = []


@dataclass
class RunCgroup:
    version: str
    dirs: dict  # controller (or "v2") -> directory

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]

    @classmethod
    def create(cls, name: str, *, memory_bytes: int, max_tasks: int, cpus: float) -> RunCgroup | None:
        version, _ = available()
        if not version:
            return None
        quota = f"{int(cpus * _PERIOD_US)} {_PERIOD_US}"
        made = {}
        try:
            if version == "v2":
                d = made["v2"] = os.path.join(_V2_PARENT[0], name)
                os.mkdir(d)
                _write(f"{d}/memory.max", str(memory_bytes))
                _try_write(f"{d}/memory.swap.max", "0")
                _write(f"{d}/pids.max", str(max_tasks))
                _write(f"{d}/cpu.max", quota)
            else:
                for controller, parent in _V1_PARENTS.items():
                    made[controller] = os.path.join(parent, name)
                    os.mkdir(made[controller])
                m = made["memory"]
                _write(f"{m}/memory.limit_in_bytes", str(memory_bytes))
                _try_write(f"{m}/memory.memsw.limit_in_bytes", str(memory_bytes))  # no swapping past it
                _write(f"{made['pids']}/pids.max", str(max_tasks))
                _write(f"{made['cpu']}/cpu.cfs_period_us", str(_PERIOD_US))
                _write(f"{made['cpu']}/cpu.cfs_quota_us", str(int(cpus * _PERIOD_US)))
        except OSError as err:
            logger.warning("Code sandbox: could not set up the run's cgroup (%s); running without it.", err)
            RunCgroup(version, made).remove()
            return None
        return cls(version, made)

    def pids(self) -> set[int]:
        found = set()
        for procs in self.procs_files:
            try:
                with open(procs) as f:
                    found.update(int(p) for p in f.read().split())
            except (OSError, ValueError):
                pass
        return found

    def kill(self) -> None:
        """SIGKILL every process in the run's cgroups (also those that left its session or namespace)."""
        if self.version == "v2" and _try_write(os.path.join(self.dirs["v2"], "cgroup.kill"), "1"):
            return
        for _ in range(50):  # a process may fork while we kill; the pids limit bounds how often
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.002)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the run for going over the cgroup's memory limit."""
        path = os.path.join(self.dirs.get("v2") or self.dirs.get("memory", ""), "memory.events")
        if self.version == "v1":
            path = os.path.join(self.dirs["memory"], "memory.oom_control")
        try:
            with open(path) as f:
                fields = dict(line.split() for line in f if len(line.split()) == 2)
            return int(fields.get("oom_kill", 0)) > 0
        except (OSError, ValueError):
            pass
        return False

    def cpu_seconds(self) -> float | None:
        """CPU time of every process of the run together."""
        try:
            if self.version == "v2":
                with open(os.path.join(self.dirs["v2"], "cpu.stat")) as f:
                    stats = dict(line.split() for line in f if len(line.split()) == 2)
                return int(stats["usage_usec"]) / 1e6
            if "cpuacct" in self.dirs:
                with open(os.path.join(self.dirs["cpuacct"], "cpuacct.usage")) as f:
                    return int(f.read()) / 1e9
        except (OSError, ValueError, KeyError):
            pass
        return None

    def remove(self) -> None:
        for d in self.dirs.values():
            for attempt in range(100):  # the last processes may still be exiting
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    if attempt == 99:
                        logger.warning("Code sandbox: could not remove the run's cgroup %s: %s", d, err)
                    time.sleep(0.01)


def _try_write(path: str, value: str) -> bool:
    try:
        _write(path, value)
        return True
    except OSError:
        return False
