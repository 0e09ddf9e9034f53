"""The Ansible collection pcipass.passthrough, run for real.

ansible-core's own ansible-playbook runs the collection's example playbook
(examples/site.yml: a check-mode plan on every host, then the apply) with
the local connection against example-host trees, one tree per inventory host
(``root`` per host), pcipass started as ``python -m pcipass`` of this venv.
Nothing is mocked: the modules run pcipass's CLI, which works on the trees
through the simulated kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pcipass.testing.example import build_kvm, build_rhel5_xen
from pcipass.testing.fakehost import snapshot

try:
    import ansible  # noqa: F401

    HAVE_ANSIBLE = True
except ImportError:
    HAVE_ANSIBLE = False
    if os.environ.get("CI"):
        # CI must not pass on fewer tests than it claims.
        raise RuntimeError("ansible-core is not installed: pip install -e '.[test]'") from None

pytestmark = pytest.mark.skipif(
    not HAVE_ANSIBLE, reason="ansible-core not installed (pip install -e '.[test]')"
)

REPO = Path(__file__).resolve().parent.parent
COLLECTION = REPO / "ansible_collections" / "pcipass" / "passthrough"
SITE = COLLECTION / "examples" / "site.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

# What each kind of example host is asked for (the inventory's host vars).
RHEL5_VARS: dict[str, Any] = {
    "pcipass_hide": ["0000:09:00.0"],
    "pcipass_assign": [
        {
            "address": "0000:09:00.0",
            "guest": "rhel5pv",
            "accept_pv_dma_risk": True,
            "guest_os": "rhel5.4",
        }
    ],
}
KVM_VARS: dict[str, Any] = {
    "pcipass_hide": ["0000:02:10.0"],
    "pcipass_backend": "vfio",
    "pcipass_assign": [{"address": "0000:02:10.0", "guest": "win10"}],
}
BUILDERS = {"rhel5": (build_rhel5_xen, RHEL5_VARS), "kvm": (build_kvm, KVM_VARS)}

# ansible-core ships no JSON stdout callback (it moved to ansible.posix): this
# one records every task result, as JSON lines, in the file $PCIPASS_TEST_RECORD.
RECORDER = """
import json, os, time
from ansible.plugins.callback import CallbackBase

class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.play = -1

    def v2_playbook_on_play_start(self, play):
        self.play += 1
        self._write({"play_start": self.play, "at": time.monotonic()})

    def v2_playbook_on_stats(self, stats):
        self._write({"play_start": self.play + 1, "at": time.monotonic()})

    def _write(self, entry):
        with open(os.environ["PCIPASS_TEST_RECORD"], "a") as out:
            out.write(json.dumps(entry, default=str) + "\\n")

    def _record(self, result, status):
        entry = {"play": self.play, "task": result._task.get_name(),
                 "host": result._host.get_name(), "status": status,
                 "result": result._result}
        self._write(entry)

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")
"""


def make_inventory(
    tmp_path: Path, kinds: dict[str, str], overrides: dict[str, dict[str, Any]] | None = None
) -> tuple[Path, dict[str, Path]]:
    """One example tree per host; an inventory (JSON is YAML) naming them."""
    hosts: dict[str, Any] = {}
    trees: dict[str, Path] = {}
    for name, kind in kinds.items():
        build, host_vars = BUILDERS[kind]
        tree = tmp_path / "hosts" / name
        build(tree).mark_simulated()
        trees[name] = tree
        hosts[name] = {**host_vars, "pcipass_root": str(tree), **(overrides or {}).get(name, {})}
    inventory = {
        "passthrough": {
            "hosts": hosts,
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "pcipass_command": [sys.executable, "-m", "pcipass"],
            },
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(json.dumps(inventory))
    return path, trees


class Run:
    """One ansible-playbook run: its exit code, output and recorded results."""

    def __init__(self, proc: subprocess.CompletedProcess[str], record: Path) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        lines = record.read_text().splitlines() if record.exists() else []
        entries = [json.loads(line) for line in lines]
        self.entries = [e for e in entries if "play_start" not in e]
        starts = {e["play_start"]: e["at"] for e in entries if "play_start" in e}
        # Wall time of each play: from its start to the next play's (or the end).
        self.play_seconds = [starts[n + 1] - starts[n] for n in sorted(starts) if n + 1 in starts]

    def results(self) -> dict[tuple[int, str, str], dict[str, Any]]:
        """(play index, task name, host) -> the task's result."""
        return {(e["play"], e["task"], e["host"]): e["result"] for e in self.entries}

    def failed(self) -> dict[tuple[int, str, str], dict[str, Any]]:
        return {
            (e["play"], e["task"], e["host"]): e["result"]
            for e in self.entries
            if e["status"] == "failed"
        }

    def changed_hosts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (_, _, host), result in self.results().items():
            counts[host] = counts.get(host, 0) + changed(result)
        return counts

    def output(self) -> str:
        return self.stdout[-4000:] + self.stderr[-2000:]


def playbook(tmp_path: Path, inventory: Path, book: Path, *options: str) -> Run:
    plugins = tmp_path / "callback_plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "record.py").write_text(RECORDER)
    record = tmp_path / f"record-{len(list(tmp_path.glob('record-*')))}.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PCIPASS_"))}
    env.update(
        PCIPASS_TEST_RECORD=str(record),
        ANSIBLE_CALLBACK_PLUGINS=str(plugins),
        ANSIBLE_CALLBACKS_ENABLED="record",
        ANSIBLE_COLLECTIONS_PATH=str(REPO),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_REMOTE_TEMP=str(tmp_path / "ansible-remote-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_HOST_KEY_CHECKING="0",
        ANSIBLE_DEPRECATION_WARNINGS="0",
    )
    record.touch()
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(book), *options],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    return Run(proc, record)


def changed(result: dict[str, Any]) -> bool:
    if "results" in result:  # a loop
        return any(item.get("changed") for item in result["results"])
    return bool(result.get("changed"))


def file_diffs(result: dict[str, Any]) -> list[str]:
    """The configuration file diffs of a result (not the binding lines).

    The ``mode PATH: 0755`` trailer is left out: ``guard-install --json``
    renders its diffs after writing, when the mode no longer differs, so only
    the dry run shows it (reported to the hooks area)."""
    items = result.get("results", [result])
    return [
        "".join(
            line
            for line in diff["prepared"].splitlines(keepends=True)
            if not line.startswith("mode ")
        )
        for item in items
        for diff in item.get("diff") or []
        if diff.get("prepared", "").startswith("--- ")
    ]


def snapshots(trees: dict[str, Path]) -> dict[str, dict[str, object]]:
    """Every file of every tree, pcipass's own state included: check mode
    must not touch it either.  SQLite's side files of the ledger are the
    exception a reader leaves (an empty -wal log, the -shm index that holds
    no data): an empty -wal counts as absent, so a write that sits in the
    log still shows."""
    result = {}
    for name, tree in trees.items():
        files = snapshot(tree, skip=())
        result[name] = {
            path: data
            for path, data in files.items()
            if not path.endswith("-shm")
            and not (path.endswith("-wal") and data[:2] == ("file", b""))  # type: ignore[index]
        }
    return result


def test_check_mode_changes_nothing_and_diff_shows_the_files(tmp_path: Path) -> None:
    inventory, trees = make_inventory(tmp_path, {"dom0": "rhel5", "kvm": "kvm"})
    before = snapshots(trees)
    run = playbook(tmp_path, inventory, SITE, "--check", "--diff")
    assert run.returncode == 0, run.output()
    assert snapshots(trees) == before
    out = run.stdout
    # RHEL 5: /etc/modprobe.conf (Procedure 15.3 step 1) and the xm guest file.
    assert "+++ /etc/modprobe.conf" in out
    assert "+options pciback hide=(0000:09:00.0)" in out
    assert "+++ /etc/xen/rhel5pv" in out
    assert "+pci = [ '0000:09:00.0' ]" in out
    # KVM: modprobe.d for vfio-pci, the libvirt XML, the guard hook.
    assert "+++ /etc/libvirt/qemu/win10.xml" in out
    assert "<address domain='0x0000' bus='0x02' slot='0x10' function='0x0'/>" in out
    assert "+++ /etc/libvirt/hooks/qemu" in out
    # The binding changes.
    assert "would run: echo 0000:09:00.0 > /sys/bus/pci/drivers/bnx2/unbind" in out
    assert "would run: echo 0000:02:10.0 > /sys/bus/pci/drivers/igbvf/unbind" in out


def test_apply_does_what_check_mode_predicted_then_nothing(tmp_path: Path) -> None:
    inventory, trees = make_inventory(tmp_path, {"dom0": "rhel5", "kvm": "kvm"})
    before = snapshots(trees)
    run = playbook(tmp_path, inventory, SITE, "--diff")
    assert run.returncode == 0, run.output()
    found = run.results()
    plan = {(task, host): r for (play, task, host), r in found.items() if play == 0}
    applied = {(task, host): r for (play, task, host), r in found.items() if play == 1}
    assert plan.keys() == applied.keys()
    assert len(plan) == 6  # three tasks on two hosts
    for key, result in plan.items():
        assert result.get("changed") is not None or "results" in result, key
        assert changed(result) == changed(applied[key]), key
        assert file_diffs(result) == file_diffs(applied[key]), key
        assert changed(result), key  # every task has work on fresh trees

    # Exactly the predicted files changed on each host (the simulated kernel's
    # sysfs and pcipass's ledger aside).
    after = snapshots(trees)
    for name, tree in trees.items():
        predicted = {
            diff.split("\n", 2)[1].removeprefix("+++ ").lstrip("/")
            for (task, host), result in plan.items()
            if host == name
            for diff in file_diffs(result)
        }
        touched = {
            path
            for path in before[name].keys() | after[name].keys()
            if path.startswith("etc/") and before[name].get(path) != after[name].get(path)
        }
        touched_files = {p for p in touched if (tree / p).is_file() or p not in after[name]}
        assert touched_files == predicted, name

    again = playbook(tmp_path, inventory, SITE, "--diff")
    assert again.returncode == 0, again.output()
    assert again.changed_hosts() == {"dom0": 0, "kvm": 0}

    facts_book = tmp_path / "facts.yml"
    facts_book.write_text(
        json.dumps(
            [
                {
                    "hosts": "passthrough",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "facts",
                            "pcipass.passthrough.pcipass_facts": {
                                "root": "{{ pcipass_root }}",
                                "pcipass_command": "{{ pcipass_command }}",
                            },
                        }
                    ],
                }
            ]
        )
    )
    facts = playbook(tmp_path, inventory, facts_book).results()
    for host, address, guest in (
        ("dom0", "0000:09:00.0", "rhel5pv"),
        ("kvm", "0000:02:10.0", "win10"),
    ):
        pcipass = facts[(0, "facts", host)]["ansible_facts"]["pcipass"]
        hidden = [d["address"] for d in pcipass["devices"] if d["hidden"]]
        assert hidden == [address]
        assert [(o["address"], o["guest"]) for o in pcipass["status"]["owners"]] == [
            (address, guest)
        ]


GIVE_BACK_TASKS: dict[str, dict[str, Any]] = {
    "detach": {
        "pcipass.passthrough.pcipass_guest_device": {
            "address": "0000:09:00.0",
            "guest": "rhel5pv",
            "state": "absent",
        }
    },
    "unguard": {"pcipass.passthrough.pcipass_guard": {"state": "absent"}},
    "give back": {
        "pcipass.passthrough.pcipass_device": {
            "address": "09:00.0",
            "state": "host",
            "persist": True,
        }
    },
}


def book_of(tmp_path: Path, name: str, tasks: list[str]) -> Path:
    defaults = {"root": "{{ pcipass_root }}", "pcipass_command": "{{ pcipass_command }}"}
    play = {
        "hosts": "passthrough",
        "gather_facts": False,
        "module_defaults": {"group/pcipass.passthrough.pcipass": defaults},
        "tasks": [{"name": task, **GIVE_BACK_TASKS[task]} for task in tasks],
    }
    book = tmp_path / f"{name}.yml"
    book.write_text(json.dumps([play]))
    return book


def check_then_apply(tmp_path: Path, inventory: Path, trees: dict[str, Path], book: Path) -> str:
    """Check mode changes nothing; the apply changes what it predicted.
    Returns check mode's --diff output."""
    before = snapshots(trees)
    check = playbook(tmp_path, inventory, book, "--check", "--diff")
    assert check.returncode == 0, check.output()
    assert snapshots(trees) == before
    run = playbook(tmp_path, inventory, book)
    assert run.returncode == 0, run.output()
    predicted = {key: changed(r) for key, r in check.results().items()}
    assert predicted == {key: changed(r) for key, r in run.results().items()}
    assert set(predicted.values()) == {True}
    return check.stdout


def test_give_back_undoes_the_apply_with_check_mode_first(tmp_path: Path) -> None:
    inventory, trees = make_inventory(tmp_path, {"dom0": "rhel5"})
    dom0 = trees["dom0"]
    pristine = {path: data for path, data in snapshot(dom0).items() if path.startswith("etc/")}
    assert playbook(tmp_path, inventory, SITE).returncode == 0
    # Two steps: a check-mode pass cannot predict the give-back while the
    # device still belongs to the guest (pcipass refuses, PP101), as the
    # detach it depends on has not happened in check mode.
    out = check_then_apply(
        tmp_path, inventory, trees, book_of(tmp_path, "detach", ["detach", "unguard"])
    )
    assert "-pci = [ '0000:09:00.0' ]" in out
    assert "--- /etc/libvirt/hooks/qemu" in out
    out = check_then_apply(tmp_path, inventory, trees, book_of(tmp_path, "host", ["give back"]))
    assert "-options pciback hide=(0000:09:00.0)" in out
    assert "would run: echo 0000:09:00.0 > /sys/bus/pci/drivers/bnx2/bind" in out
    # The host's configuration is as it was before the first play.
    after = {path: data for path, data in snapshot(dom0).items() if path.startswith("etc/")}
    assert after == pristine
    driver = dom0 / "sys/bus/pci/devices/0000:09:00.0/driver"
    assert os.path.basename(os.readlink(driver)) == "bnx2"
    again = playbook(tmp_path, inventory, book_of(tmp_path, "all", list(GIVE_BACK_TASKS)))
    assert again.returncode == 0, again.output()
    assert again.changed_hosts() == {"dom0": 0}


def test_refusal_on_one_host_fails_with_the_rule_and_changes_no_host(tmp_path: Path) -> None:
    # The dom0's 0000:05:00.0 carries the default route (PP001); the KVM
    # host's plan is fine, but the plan play stops the run before any apply.
    inventory, trees = make_inventory(
        tmp_path,
        {"dom0": "rhel5", "kvm": "kvm"},
        overrides={"dom0": {"pcipass_hide": ["0000:05:00.0"], "pcipass_assign": []}},
    )
    before = snapshots(trees)
    run = playbook(tmp_path, inventory, SITE)
    assert run.returncode != 0
    found = run.results()
    failed = run.failed()
    assert list(failed) == [(0, "Hide the devices from the host, now and at every boot", "dom0")]
    result = next(iter(failed.values()))
    assert result["rule"] == "PP001"
    assert result["refused"] is True
    assert result["msg"].startswith("pcipass: 0000:05:00.0: [PP001]")
    assert result["remedy"]
    assert any("default route" in f["message"] for f in result["findings"])
    assert all(f["rule"] == "PP001" for f in result["findings"])
    assert not any(play == 1 for play, _, _ in found)  # the apply play never ran
    assert snapshots(trees) == before


def test_install_role_puts_the_one_file_build_on_a_host(tmp_path: Path) -> None:
    pyz = tmp_path / "dist" / "pcipass.pyz"
    subprocess.run(
        [sys.executable, str(REPO / "packaging" / "build_zipapp.py"), "--output", str(pyz)],
        check=True,
        capture_output=True,
    )
    inventory, _ = make_inventory(tmp_path, {"dom0": "rhel5"})
    target = tmp_path / "target"
    book = tmp_path / "install.yml"
    book.write_text(
        json.dumps(
            [
                {
                    "hosts": "passthrough",
                    "gather_facts": False,
                    "roles": [
                        {
                            "role": "pcipass.passthrough.install",
                            "install_pcipass_pyz": str(pyz),
                            "install_pcipass_dir": str(target / "lib" / "pcipass"),
                            "install_pcipass_link": str(target / "sbin" / "pcipass"),
                            "install_pcipass_python": sys.executable,
                        }
                    ],
                    "tasks": [
                        {
                            "name": "facts through the installed build",
                            "pcipass.passthrough.pcipass_facts": {
                                "root": "{{ pcipass_root }}",
                                "pcipass_command": [
                                    sys.executable,
                                    str(target / "lib" / "pcipass" / "pcipass.pyz"),
                                ],
                            },
                        }
                    ],
                }
            ]
        )
    )
    (target / "sbin").mkdir(parents=True)
    run = playbook(tmp_path, inventory, book)
    assert run.returncode == 0, run.output()
    assert (target / "lib" / "pcipass" / "pcipass.pyz").read_bytes() == pyz.read_bytes()
    assert os.readlink(target / "sbin" / "pcipass") == str(
        target / "lib" / "pcipass" / "pcipass.pyz"
    )
    found = run.results()
    devices = found[(0, "facts through the installed build", "dom0")]["ansible_facts"]["pcipass"][
        "devices"
    ]
    assert "0000:09:00.0" in [d["address"] for d in devices]
    again = playbook(tmp_path, inventory, book)
    assert again.returncode == 0, again.output()
    assert again.changed_hosts() == {"dom0": 0}


@pytest.mark.slow
def test_twenty_hosts_with_forks(tmp_path: Path) -> None:
    """20 hosts, 10 forks, the example playbook: its plan play is the
    check-mode run, its apply play the apply.  The wall time of each is
    printed for the collection README (measured, not asserted)."""
    kinds = {f"host{n:02d}": ("rhel5" if n % 2 else "kvm") for n in range(20)}
    inventory, trees = make_inventory(tmp_path, kinds)
    run = playbook(tmp_path, inventory, SITE, "--forks", "10")
    assert run.returncode == 0, run.output()
    # Three tasks changed per host in each play (the plan predicts, the apply does).
    assert run.changed_hosts() == {name: 6 for name in kinds}
    for name, tree in trees.items():
        config = "etc/xen/rhel5pv" if kinds[name] == "rhel5" else "etc/libvirt/qemu/win10.xml"
        assert ("0000:09:00.0" in (tree / config).read_text()) == (kinds[name] == "rhel5")
        assert ("bus='0x02' slot='0x10'" in (tree / config).read_text()) == (kinds[name] == "kvm")
    plan, apply = run.play_seconds
    print(f"\n20 hosts, forks 10: check-mode plan {plan:.1f} s, apply {apply:.1f} s")


def test_collection_builds(tmp_path: Path) -> None:
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    subprocess.run(
        [str(galaxy), "collection", "build", str(COLLECTION), "--output-path", str(tmp_path)],
        check=True,
        capture_output=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        | {"ANSIBLE_HOME": str(tmp_path / "ansible-home")},
    )
    with tarfile.open(tmp_path / "pcipass-passthrough-0.1.0.tar.gz") as archive:
        names = set(archive.getnames())
        manifest = json.load(archive.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    assert manifest["collection_info"]["namespace"] == "pcipass"
    assert manifest["collection_info"]["name"] == "passthrough"
    for module in ("pcipass_facts", "pcipass_device", "pcipass_guest_device", "pcipass_guard"):
        assert f"plugins/modules/{module}.py" in names
    assert "plugins/module_utils/pcipass_api.py" in names
    assert "roles/install/tasks/main.yml" in names
    assert "examples/site.yml" in names
    assert not any("__pycache__" in name for name in names)


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    """ansible-test sanity builds its own venvs with pip fetched from the
    network, so offline the collection is checked with ansible-lint's
    production profile (the brief's fallback)."""
    lint = Path(sys.executable).parent / "ansible-lint"
    if sys.version_info < (3, 10):
        pytest.skip("ansible-lint 24+ needs Python 3.10; the suite on a newer Python runs it")
    if not lint.exists():
        if os.environ.get("CI"):
            pytest.fail("ansible-lint is not installed: pip install -e '.[test]'")
        pytest.skip("ansible-lint not installed (pip install -e '.[test]')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(REPO),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        NO_COLOR="1",
    )
    run = subprocess.run(
        [str(lint), "--offline", "--profile", "production", "--nocolor"],
        capture_output=True,
        text=True,
        env=env,
        cwd=COLLECTION,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in run.stderr + run.stdout


@pytest.mark.parametrize(
    "module", ["pcipass_facts", "pcipass_device", "pcipass_guest_device", "pcipass_guard"]
)
def test_every_module_documents_the_shared_options_from_one_fragment(module: str) -> None:
    """ansible-doc resolves the collection's doc fragment: root, pcipass_command and the
    requirement are written once (plugins/doc_fragments/pcipass.py) and shown for each module."""
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-doc"),
            "--json",
            f"pcipass.passthrough.{module}",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)[f"pcipass.passthrough.{module}"]["doc"]
    assert {"root", "pcipass_command"} <= set(doc["options"])
    assert doc["options"]["root"]["default"] == "/"
    assert any("pcipass on the target" in r for r in doc["requirements"])
