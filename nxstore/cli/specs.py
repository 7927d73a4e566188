"""The SPEC arguments of the Leap commands (argparse `type=` functions; a bad SPEC is a
usage error naming what is wrong):

    --schedule every=15m,keep-local=4,keep-remote=2,app-consistent    (policy create|update)
    --schedule rpo=0,witness=HOST:PORT                                (synchronous, Metro)
    --stage 'vms=db,app;categories=tier:web;delay=30s;hook=/usr/local/bin/check'  (plan create)
    --network VLAN50=FR-VLAN50,test=VLAN51=FR-VLAN51                   (plan create)

A schedule's fields are separated by commas, a stage's by semicolons (its lists use commas:
quote it in the shell). Durations are seconds, or a number with s, m, h or d.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: parsing the command line needs no Leap
    from ..leap import NetworkMapping, PolicySchedule, Stage

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
SCHEDULE_KEYS = ("every", "rpo", "keep-local", "keep-remote", "app-consistent", "witness")
STAGE_KEYS = ("vms", "categories", "delay", "hook")


def _bad(what: str, text: str, why: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"bad {what} {text!r}: {why}")


def duration(text: str, what: str, spec: str) -> float:
    """Seconds from '30', '2.5', '10s', '15m', '1h', '1d' (0 allowed); ArgumentTypeError
    naming the `what` SPEC it is part of otherwise."""
    m = _DURATION_RE.match(text.strip())
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)] if m else math.nan
    if not math.isfinite(seconds):
        raise _bad(what, spec, f"duration {text!r}: use seconds or a number with s, m, h or "
                               "d (e.g. 15m)")
    return seconds


def _count(text: str, what: str, spec: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise _bad(what, spec, f"count {text!r}: a whole number, at least 1")
    return int(text)


def _fields(spec: str, sep: str, what: str, keys: tuple[str, ...]) -> dict[str, str]:
    """KEY=VALUE (or a bare KEY, value "") fields of `spec` split at `sep`; each key once."""
    out: dict[str, str] = {}
    for item in (x.strip() for x in spec.split(sep)):
        if not item:
            continue
        key, has_value, value = item.partition("=")
        key = key.strip()
        if key not in keys:
            raise _bad(what, spec, f"unknown field {key!r} (fields: {', '.join(keys)})")
        if key in out:
            raise _bad(what, spec, f"field {key!r} given twice")
        if has_value and not value.strip():
            raise _bad(what, spec, f"field {key!r} has no value")
        out[key] = value.strip()
    return out


def schedule_arg(spec: str) -> PolicySchedule:
    """A policy schedule from `every=15m,keep-local=4,keep-remote=2,app-consistent` or
    `rpo=0,witness=HOST:PORT` (`rpo` is another name for `every`; 0 is synchronous).
    The witness's secret is not part of it (the command reads --witness-secret-file)."""
    from ..leap import PolicySchedule

    what = "schedule"
    f = _fields(spec, ",", what, SCHEDULE_KEYS)
    if ("every" in f) == ("rpo" in f):
        raise _bad(what, spec, "give every=DURATION (or rpo=DURATION; rpo=0 is synchronous)")
    if f.get("app-consistent"):
        raise _bad(what, spec, "app-consistent takes no value")
    every = duration(f.get("every") or f.get("rpo") or "", what, spec)
    return PolicySchedule(
        every=every,
        keep_local=_count(f["keep-local"], what, spec) if "keep-local" in f else 1,
        keep_remote=_count(f["keep-remote"], what, spec) if "keep-remote" in f else 1,
        app_consistent="app-consistent" in f,
        witness=f.get("witness", ""))


def schedule_text(s: PolicySchedule) -> str:
    """A schedule as `--schedule` takes it (the witness's secret never shown)."""
    from ..protection.schedule import interval_text

    parts = ["rpo=0" if s.every == 0 else f"every={interval_text(s.every)}",
             f"keep-local={s.keep_local}", f"keep-remote={s.keep_remote}"]
    if s.app_consistent:
        parts.append("app-consistent")
    if s.witness:
        parts.append(f"witness={s.witness}")
    return ",".join(parts)


def _items(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def stage_arg(spec: str) -> Stage:
    """A recovery plan stage from `vms=db,app;categories=tier:web;delay=30s;hook=/path`:
    its VMs power on in the order given, then those with any of the categories; `delay`
    before it (after the previous stage); `hook` an executable (absolute path: it runs at
    the recovery zone) run with [hook, plan, action, VM...] once the stage's VMs are on."""
    from ..leap import Stage

    what = "stage"
    f = _fields(spec, ";", what, STAGE_KEYS)
    vms = _items(f.get("vms", ""))
    categories: list[tuple[str, str]] = []
    for item in _items(f.get("categories", "")):
        key, sep, value = item.partition(":")
        if not (key and sep and value):
            raise _bad(what, spec, f"category {item!r} is not KEY:VALUE")
        categories.append((key, value))
    if not vms and not categories:
        raise _bad(what, spec, "name some vms=VM,... or categories=KEY:VALUE,...")
    hook = f.get("hook", "")
    if hook and not os.path.isabs(hook):
        raise _bad(what, spec, f"hook {hook!r} is not an absolute path (it runs at the "
                               "recovery zone)")
    return Stage(vms=vms, categories=tuple(categories),
                 delay=duration(f["delay"], what, spec) if "delay" in f else 0.0, hook=hook)


def stage_text(s: Stage) -> str:
    """A stage as `--stage` takes it."""
    parts = []
    if s.vms:
        parts.append(f"vms={','.join(s.vms)}")
    if s.categories:
        parts.append(f"categories={','.join(f'{k}:{v}' for k, v in s.categories)}")
    if s.delay:
        parts.append(f"delay={s.delay:g}s")
    if s.hook:
        parts.append(f"hook={s.hook}")
    return ";".join(parts)


def network_arg(spec: str) -> NetworkMapping:
    """A network mapping from `PRIMARY=RECOVERY` or `PRIMARY=RECOVERY,test=PTEST=RTEST`."""
    from ..leap import NetworkMapping

    what = "network mapping"
    production, _, test = spec.partition(",")
    primary, sep, recovery = production.partition("=")
    if not (primary.strip() and sep and recovery.strip()):
        raise _bad(what, spec, "expected PRIMARY=RECOVERY[,test=PRIMARY_TEST=RECOVERY_TEST]")
    primary_test = recovery_test = ""
    if test:
        key, _, pair = test.partition("=")
        primary_test, sep, recovery_test = pair.partition("=")
        if key.strip() != "test" or not (primary_test.strip() and sep and recovery_test.strip()):
            raise _bad(what, spec, "the test networks are test=PRIMARY_TEST=RECOVERY_TEST")
    return NetworkMapping(primary.strip(), recovery.strip(), primary_test.strip(),
                          recovery_test.strip())


def network_text(n: NetworkMapping) -> str:
    """A network mapping as `--network` takes it."""
    test = f",test={n.primary_test}={n.recovery_test}" if n.primary_test or n.recovery_test else ""
    return f"{n.primary}={n.recovery}{test}"
