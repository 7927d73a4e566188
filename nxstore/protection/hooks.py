"""Application-consistency hooks: pre-freeze / post-thaw, run with a timeout.

A hook is either a Python callable registered at runtime (called as `hook(vm)`;
not persisted: register it again after reopening the cluster) or the path of
an executable stored in the catalogue (run as `PATH pre-freeze|post-thaw VM`,
with NXSTORE_VM, NXSTORE_PD and NXSTORE_HOOK in its environment). A hook
fails when it raises, exits non-zero, or outlives its timeout; an executable
that times out is killed with its whole process group. A callable that times
out cannot be killed: its thread is abandoned (daemon) and the hook reported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument

PRE_FREEZE = "pre-freeze"
POST_THAW = "post-thaw"
DEFAULT_HOOK_TIMEOUT = 30.0  # seconds a hook may run before it counts as failed
_OUTPUT_TAIL = 400  # characters of a failing executable's output kept in the report

Hook = Callable[[Any], object] | str


@dataclass(frozen=True)
class HookFailure:
    """A hook that failed (`reason` "error") or timed out (`reason` "timeout")."""

    vm: str
    phase: str   # PRE_FREEZE or POST_THAW
    reason: str  # "error" | "timeout"
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"vm": self.vm, "phase": self.phase, "reason": self.reason, "detail": self.detail}

    @classmethod
    def from_json(cls, obj: dict[str, str]) -> HookFailure:
        return cls(obj["vm"], obj["phase"], obj["reason"], obj["detail"])


def check_hook(hook: object, what: str) -> None:
    """InvalidArgument unless `hook` is None, a callable or an executable file's path."""
    if hook is None or callable(hook):
        return
    if not isinstance(hook, str) or not hook:
        raise InvalidArgument(f"{what} must be a callable or an executable path, not {hook!r}")
    if not os.path.isfile(hook) or not os.access(hook, os.X_OK):
        raise InvalidArgument(f"{what} {hook!r} is not an executable file")


def check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidArgument(f"hook timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


def run_hook(hook: Hook, phase: str, vm: Any, pd_name: str,
             timeout: float) -> HookFailure | None:
    """Run one hook; None on success, the failure otherwise (never raises)."""
    if callable(hook):
        return _run_callable(hook, phase, vm, timeout)
    return _run_executable(hook, phase, vm.name, pd_name, timeout)


def _run_callable(hook: Callable[[Any], object], phase: str, vm: Any,
                  timeout: float) -> HookFailure | None:
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            hook(vm)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported, never raised
            outcome.append(exc)

    thread = threading.Thread(target=target, name=f"hook-{phase}-{vm.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return HookFailure(vm.name, phase, "timeout", f"callable did not return within {timeout:g} s")
    exc = outcome[0] if outcome else None
    if exc is not None:
        return HookFailure(vm.name, phase, "error", f"{type(exc).__name__}: {exc}")
    return None


def _run_executable(path: str, phase: str, vm_name: str, pd_name: str,
                    timeout: float) -> HookFailure | None:
    env = dict(os.environ, NXSTORE_VM=vm_name, NXSTORE_PD=pd_name, NXSTORE_HOOK=phase)
    try:
        proc = subprocess.Popen(
            [path, phase, vm_name], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    except OSError as exc:
        return HookFailure(vm_name, phase, "error", f"cannot run {path}: {exc}")
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The whole session: a shell script's children would otherwise keep the pipe open.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return HookFailure(vm_name, phase, "timeout", f"{path} did not finish within {timeout:g} s")
    if proc.returncode != 0:
        tail = out.decode(errors="replace").strip()[-_OUTPUT_TAIL:]
        return HookFailure(vm_name, phase, "error",
                           f"{path} exited with status {proc.returncode}: {tail}".rstrip(": "))
    return None
