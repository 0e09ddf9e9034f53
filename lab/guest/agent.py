"""The lab's guest agent: runs one plan of steps inside dom0 (Xen) or L1 (KVM).

Runs under the Debian python3.11 inside the initramfs, standard library only.  Each step prints
``@@LAB PASS <step> <seconds>`` or ``@@LAB FAIL <step> <seconds> <why>`` on the console; the host
parses the serial log.  Steps and plans are registered in ``registry.py`` by the step modules
(``steps_xen.py``, ``steps_kvm.py``), which are built from ``steplib.py``; nothing imports this
module.  A step that raises anything (a pcipass command that does not exist yet included) FAILs
with the reason and the plan goes on; steps that need an earlier one FAIL as "not run" when it
did not pass.
"""

from __future__ import annotations

import signal
import sys
import time

# The step modules register their steps and plans on import.
import registry
import steps_kvm  # noqa: F401
import steps_sriov  # noqa: F401
import steps_xen  # noqa: F401
from steplib import StepFailed, StepTimeout, info, say


def _on_alarm(signum: int, frame: object) -> None:
    raise StepTimeout()


def run_plan(name: str) -> int:
    names = registry.REGISTRY.plans.get(name)
    if names is None:
        known = ", ".join(sorted(registry.REGISTRY.plans))
        say("FAIL", f"plan 0 unknown plan {name!r} (known: {known})")
        return 1
    signal.signal(signal.SIGALRM, _on_alarm)
    passed: set[str] = set()
    failures = 0
    for sname in names:
        st = registry.REGISTRY.steps[sname]
        missing = [n for n in st.needs if n not in passed]
        if missing:
            say("FAIL", f"{sname} 0.0 not run: needs {', '.join(missing)}")
            failures += 1
            continue
        say("BEGIN", sname)
        t0 = time.monotonic()
        signal.alarm(int(st.timeout))
        try:
            note = st.func()
        except StepFailed as exc:
            ok, why = False, str(exc)
        except StepTimeout:
            ok, why = False, f"step timed out after {st.timeout:.0f}s"
        except Exception as exc:  # a lab bug must not hide the remaining steps
            ok, why = False, f"lab error {type(exc).__name__}: {exc}"
        else:
            ok, why = True, note or ""
        finally:
            signal.alarm(0)
        secs = time.monotonic() - t0
        why = " ".join(why.split())[:600]
        if ok:
            passed.add(sname)
            if why:
                info(sname, why)
            say("PASS", f"{sname} {secs:.1f}")
        else:
            failures += 1
            say("FAIL", f"{sname} {secs:.1f} {why}")
    say("DONE", f"plan={name} failures={failures}")
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    return run_plan(argv[0] if argv else "")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
