"""What a new user trips over in ``ush``, through the real ``ush`` process against a real
controller with three fake LNMs."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import certifi
import pytest

from harness import Cluster


def ok(result: Any) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    return str(result.stdout)


def states(cluster: Cluster, of: str = "demo") -> dict[str, str]:
    vms = json.loads(ok(cluster.ush("list", "-o", "json", "--cluster", of)))
    return {vm["name"]: vm["state"] for vm in vms}


@pytest.fixture
def demo(cluster: Cluster) -> Cluster:
    ok(cluster.ush("start", "-n", "4", "--cluster", "demo"))
    return cluster


def test_an_action_on_many_vms_skips_those_already_there(demo: Cluster) -> None:
    ok(demo.ush("stop", "demo-1"))
    out = ok(demo.ush("stop", "--cluster", "demo"))
    assert "1 skipped" in out and "demo-1 is stopped already" in out, out
    assert set(states(demo).values()) == {"stopped"}
    again = ok(demo.ush("stop", "demo-1"))  # one VM, already there: nothing to do, exit 0
    assert "skipped" in again
    ok(demo.ush("start", "demo-1", "demo-2"))
    ok(demo.ush("start", "--cluster", "demo"))
    assert set(states(demo).values()) == {"running"}


def test_strict_keeps_the_all_or_nothing_refusal(demo: Cluster) -> None:
    ok(demo.ush("stop", "demo-1"))
    refused = demo.ush("stop", "--cluster", "demo", "--strict")
    assert refused.returncode == 1
    assert "demo-1 is stopped already" in refused.stderr and "nothing was changed" in (
        refused.stderr
    )
    assert states(demo) == {
        "demo-1": "stopped",
        "demo-2": "running",
        "demo-3": "running",
        "demo-4": "running",
    }


def test_vms_that_cannot_get_there_are_reported_and_the_rest_go_on(demo: Cluster) -> None:
    ok(demo.ush("pause", "demo-1"))
    ok(demo.ush("stop", "demo-2"))
    result = demo.ush("pause", "--cluster", "demo", "-o", "json")
    assert result.returncode == 1  # not every VM could be paused
    op = json.loads(result.stdout)
    assert op["status"] == "failed"
    assert op["result"]["progress"] == {
        "done": 2,
        "failed": 1,
        "cancelled": 0,
        "skipped": 1,
        "total": 4,
    }
    assert list(op["result"]["skipped"].values()) == ["demo-1 is paused already"]
    assert [m for m in op["result"]["errors"].values()] == [
        "cannot pause demo-2: it is stopped (pause needs running)"
    ]
    assert states(demo) == {
        "demo-1": "paused",
        "demo-2": "stopped",
        "demo-3": "paused",
        "demo-4": "paused",
    }


def test_when_no_vm_can_take_the_action_it_is_refused_as_before(demo: Cluster) -> None:
    ok(demo.ush("stop", "--cluster", "demo"))
    refused = demo.ush("pause", "--cluster", "demo")
    assert refused.returncode == 1 and "nothing was changed" in refused.stderr
    assert set(states(demo).values()) == {"stopped"}


@pytest.mark.parametrize(
    "args",
    [
        ["node", "show", "--help"],
        ["node", "--help"],
        ["resume", "--help"],
        ["list", "--help"],
        ["stop", "--help"],
        ["token", "--help"],
    ],
)
def test_no_command_warns_of_a_duplicate_option(args: list[str]) -> None:
    """``-o`` is added to a command once, however often it is registered (``python -m``
    imports the command modules a second time)."""
    for prefix in (["-m", "usher.cli.ush"], ["-c", "from usher.cli.ush import main; main()"]):
        result = subprocess.run(
            [sys.executable, "-W", "always", *prefix, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "Warning" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "plugin"),
    [(["audit"], "audit"), (["ha", "status"], "ha"), (["cluster", "show", "demo"], "authz")],
)
def test_a_plugin_command_whose_plugin_is_off_names_the_plugin(
    cluster: Cluster, args: list[str], plugin: str
) -> None:
    result = cluster.ush(*args)
    assert result.returncode == 1
    assert f"enable its plugin {plugin!r}" in result.stderr, result.stderr
    assert "Not Found" not in result.stderr


def test_ops_and_events_take_a_vm_name(demo: Cluster) -> None:
    ok(demo.ush("stop", "demo-2"))
    by_name = json.loads(ok(demo.ush("ops", "--vm", "demo-2", "-o", "json")))
    vm_id = json.loads(ok(demo.ush("show", "demo-2", "-o", "json")))["id"]
    by_id = json.loads(ok(demo.ush("ops", "--vm", vm_id, "-o", "json")))
    assert [op["kind"] for op in by_name] == ["stop", "start"]
    assert [op["id"] for op in by_name] == [op["id"] for op in by_id]
    events = json.loads(ok(demo.ush("events", "--vm", "demo-2", "-o", "json")))
    assert events and {e["vm_id"] for e in events} == {vm_id}
    assert "stop" in {e["name"] for e in events}


def test_cancel_fails_when_nothing_was_cancelled(make_cluster: Any) -> None:
    slow = make_cluster(nodes=1, lnm_options={"driver_options": {"latency": {"reboot": 4}}})
    ok(slow.ush("start", "--names", "slow"))
    op = json.loads(ok(slow.ush("reboot", "slow", "--no-wait", "-o", "json")))
    time.sleep(1)  # its one step runs now: a reboot cannot be called off
    result = slow.ush("cancel", op["id"])
    assert result.returncode == 1
    assert "slow: a running reboot step cannot be cancelled" in result.stderr
    assert "nothing of" in result.stderr and "was cancelled" in result.stderr
    shown = ok(slow.ush("op", op["id"]))
    assert "result.cancel" in shown and "result.progress" in shown


def test_desired_state_follows_what_was_asked(demo: Cluster) -> None:
    def desired(name: str) -> str:
        return str(json.loads(ok(demo.ush("show", name, "-o", "json")))["desired_state"])

    assert desired("demo-1") == "running"
    ok(demo.ush("stop", "demo-1"))
    assert desired("demo-1") == "stopped"
    assert "desired" in ok(demo.ush("show", "demo-1")) and "stopped" in ok(
        demo.ush("show", "demo-1")
    )
    ok(demo.ush("pause", "demo-2"))
    assert desired("demo-2") == "paused"
    ok(demo.ush("start", "demo-1"))
    ok(demo.ush("resume", "demo-2"))
    assert desired("demo-1") == desired("demo-2") == "running"
    ok(demo.ush("stop", "demo-3", "--strict"))
    ok(demo.ush("stop", "demo-3", "demo-4"))  # demo-3 skipped: wanted stopped all the same
    assert desired("demo-3") == desired("demo-4") == "stopped"


def test_logout_of_the_only_admin_is_refused_and_keeps_the_token(cluster: Cluster) -> None:
    result = cluster.ush("logout")
    assert result.returncode == 1
    assert "lock every administrator out" in result.stderr and "usher admin-token" in (
        result.stderr
    )
    assert json.loads(ok(cluster.ush("whoami", "-o", "json")))["name"] == "admin"


def test_a_wrong_start_says_what_is_wrong_and_what_to_do(make_cluster: Any) -> None:
    secure = make_cluster(nodes=1, settings={"tls": True})
    plain_url = secure.url.replace("https://", "http://")
    wrong_scheme = secure.ush("--url", plain_url, "list")
    assert wrong_scheme.returncode == 1
    assert "try the https:// URL" in wrong_scheme.stderr, wrong_scheme.stderr
    other_ca = secure.root / "other-ca.pem"
    other_ca.write_text(Path(certifi.where()).read_text())
    unverified = secure.ush("list", env={"USHER_CA_FILE": str(other_ca)})
    assert unverified.returncode == 1
    assert "give ush the CA that signed it" in unverified.stderr, unverified.stderr
    huge = secure.ush("start", "--memory", "99999999")
    assert huge.returncode == 2
    assert "'--memory': 99999999 is not in the range 16<=x<=4194304" in huge.stderr
    labels = secure.ush("create", "--kwarg", 'labels={"rack": "r9"}')
    assert labels.returncode == 1
    assert "no node of 1 may take these VMs: labels: lacks rack=r9" in labels.stderr
    assert "capacity" not in labels.stderr


def test_https_to_a_plain_http_controller_says_so(cluster: Cluster) -> None:
    result = cluster.ush("--url", cluster.url.replace("http://", "https://"), "list")
    assert result.returncode == 1
    assert "does not speak TLS" in result.stderr and "http:// URL" in result.stderr


def test_events_tail_shows_the_latest_and_the_api_reads_newest_first(demo: Cluster) -> None:
    ok(demo.ush("stop", "demo-4"))
    everything = json.loads(ok(demo.ush("events", "-o", "json")))
    last = json.loads(ok(demo.ush("events", "--tail", "3", "-o", "json")))
    assert [e["id"] for e in last] == [e["id"] for e in everything[-3:]]  # oldest first
    newest = demo.http("GET", "/v1/events", params={"newest": "true", "limit": 2}).json()
    assert [e["id"] for e in newest["items"]] == [e["id"] for e in everything[-1:-3:-1]]
    more = demo.http(
        "GET", "/v1/events", params={"newest": "true", "limit": 2, "cursor": newest["next"]}
    ).json()
    assert [e["id"] for e in more["items"]] == [e["id"] for e in everything[-3:-5:-1]]


def test_config_prints_the_command_that_makes_the_vm_again(cluster: Cluster) -> None:
    ok(
        cluster.ush(
            "create",
            "--names",
            "cfg",
            "--cluster",
            "c",
            "--vcpus",
            "2",
            "--memory",
            "512",
            "--kwarg",
            'note="two words"',
        )
    )
    line = ok(cluster.ush("config", "cfg")).strip()
    assert line == (
        "ush create --names cfg --cluster c --vcpus 2 --memory 512 --image tiny "
        "--kwarg 'note=\"two words\"'"
    )
    before = json.loads(ok(cluster.ush("config", "cfg", "-o", "json")))
    ok(cluster.ush("destroy", "cfg"))
    ok(cluster.ush(*shlex.split(line)[1:]))  # the printed command, run again
    assert json.loads(ok(cluster.ush("config", "cfg", "-o", "json"))) == before


def test_list_takes_name_patterns_a_sort_and_columns(demo: Cluster) -> None:
    ok(demo.ush("create", "--names", "db-1,db-2", "--vcpus", "2"))
    ok(demo.ush("stop", "demo-3"))
    out = ok(demo.ush("list", "demo-*", "--sort", "state", "--columns", "name,state"))
    lines = [line.split() for line in out.strip().splitlines()]
    assert lines[0] == ["NAME", "STATE"]
    assert lines[1:] == [
        ["demo-1", "running"],
        ["demo-2", "running"],
        ["demo-4", "running"],
        ["demo-3", "stopped"],
    ]
    names = json.loads(ok(demo.ush("list", "db-?", "-o", "json")))
    assert sorted(vm["name"] for vm in names) == ["db-1", "db-2"]
    bad = demo.ush("list", "--columns", "name,colour")
    assert bad.returncode == 2 and "no column 'colour'" in bad.stderr


def bash_completes(cluster: Cluster, line: str) -> list[str]:
    """What bash offers at the end of ``line``, with the script ``ush completion bash``
    prints installed, asking the real ``ush`` (on PATH, as after the quick start)."""
    script = ok(cluster.ush("completion", "bash"))
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    program = (
        f"{script}\nCOMP_WORDS=({shlex.join(words)}); COMP_CWORD={len(words) - 1}\n"
        'complete -p ush >/dev/null && _ush_completion ush && printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "USHER_SERVER_IDLE": "5",  # (the installed ush starts its server: let it end soon)
        "USHER_URL": cluster.url,
        "USHER_TOKEN": cluster.token,
        "USHER_HOME": str(cluster.root / "home"),
    }
    if cluster.tls:
        env["USHER_CA_FILE"] = str(cluster.ca)
    done = subprocess.run(["bash", "-c", program], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [word for word in done.stdout.splitlines() if word]


def test_bash_completes_commands_options_and_names_from_the_controller(demo: Cluster) -> None:
    assert bash_completes(demo, "ush st") == ["start", "stop"]
    assert bash_completes(demo, "ush stop demo-") == [f"demo-{i}" for i in range(1, 5)]
    assert bash_completes(demo, "ush show demo-3") == ["demo-3"]
    assert bash_completes(demo, "ush drain node-") == ["node-1", "node-2", "node-3"]
    assert "--timeout" in bash_completes(demo, "ush stop --t")
    assert bash_completes(demo, "ush list --state pa") == ["paused"]
    for shell in ("zsh", "fish"):
        assert "_USH_COMPLETE" in ok(demo.ush("completion", shell))
    wrong = demo.ush("completion", "tcsh")
    assert wrong.returncode == 2 and "'tcsh' is not one of" in wrong.stderr


def test_names_complete_to_nothing_when_the_controller_is_away(demo: Cluster) -> None:
    demo.url = "https://127.0.0.1:1"  # nobody listens there
    assert bash_completes(demo, "ush stop demo-") == []


def test_man_pages_for_every_command(cluster: Cluster, tmp_path: Path) -> None:
    written = cluster.ush("man", "--dir", str(tmp_path / "man1"))
    assert written.returncode == 0 and "man ush-list" in written.stderr, written.stderr
    pages = {page.name for page in (tmp_path / "man1").iterdir()}
    assert {"ush.1", "ush-stop.1", "ush-create.1", "ush-remote-add.1"} <= pages
    stop = (tmp_path / "man1" / "ush-stop.1").read_text()
    assert stop.startswith(".TH") and "\\-\\-timeout" in stop and "\\-\\-force" in stop
    refused = cluster.ush("man", "--dir", "/proc/no-such-dir")
    assert refused.returncode == 1 and "cannot write the man pages" in refused.stderr


def test_a_slow_stop_says_what_it_waits_for(make_cluster: Any) -> None:
    """A guest that takes its time to power off (here: 5 s on every stop): ush says, once,
    what it waits for and how to stop at once; a hard stop has nothing to explain."""
    cluster = make_cluster(nodes=1, lnm_options={"driver_options": {"latency": {"stop": 5}}})
    ok(cluster.ush("create", "--names", "slow-1,slow-2"))
    result = cluster.ush("stop", "slow-1", "slow-2", "--timeout", "20")
    assert result.returncode == 0, result.stderr
    hints = [line for line in result.stderr.splitlines() if "waiting for" in line]
    assert len(hints) == 1, result.stderr
    assert "waiting for 2 guests to power off" in hints[0] and "after 20 s" in hints[0]
    assert "`ush stop --force` stops at once" in hints[0]
    ok(cluster.ush("start", "slow-1"))
    quick = cluster.ush("stop", "slow-1")
    assert "the driver's grace" in quick.stderr, quick.stderr
    ok(cluster.ush("start", "slow-1"))
    forced = cluster.ush("stop", "slow-1", "--force")
    assert forced.returncode == 0 and "waiting for" not in forced.stderr, forced.stderr


def names_and_tags(cluster: Cluster, *args: str) -> dict[str, list[str]]:
    vms = json.loads(ok(cluster.ush("list", "-o", "json", *args)))
    return {vm["name"]: vm["tags"] for vm in vms}


def test_tags_set_at_create_changed_later_and_listed(demo: Cluster) -> None:
    ok(demo.ush("create", "--names", "db-1,db-2", "--tag", "env=prod", "--tag", "db"))
    ok(demo.ush("create", "--names", "db-3", "--tag", "db", "--tag", "team/data"))
    assert names_and_tags(demo, "--tag", "db") == {
        "db-1": ["env=prod", "db"],
        "db-2": ["env=prod", "db"],
        "db-3": ["db", "team/data"],
    }
    assert list(names_and_tags(demo, "--tag", "db", "--tag", "env=prod")) == ["db-1", "db-2"]
    assert names_and_tags(demo, "--tag", "nothing") == {}
    ok(demo.ush("create", "--names", "shouting", "--tag", "ENV=PROD"))  # case counts
    assert "shouting" not in names_and_tags(demo, "--tag", "env=prod")
    assert list(names_and_tags(demo, "--tag", "ENV=PROD")) == ["shouting"]
    ok(demo.ush("tag", "add", "db-3", "env=prod", "db"))  # db: there already, kept once
    ok(demo.ush("tag", "rm", "db-1", "env=prod"))
    assert names_and_tags(demo, "--tag", "env=prod") == {
        "db-2": ["env=prod", "db"],
        "db-3": ["db", "team/data", "env=prod"],
    }
    ok(demo.ush("tag", "set", "db-2"))  # no tags
    assert json.loads(ok(demo.ush("show", "db-2", "-o", "json")))["tags"] == []
    # like-patterns are not patterns: _ and % are themselves
    ok(demo.ush("tag", "set", "db-1", "a_b"))
    assert list(names_and_tags(demo, "--tag", "a_b")) == ["db-1"]
    assert names_and_tags(demo, "--tag", "axb") == {}
    config = ok(demo.ush("config", "db-3"))
    assert "--tag db --tag team/data --tag env=prod" in config
    assert "TAGS" in ok(demo.ush("list", "--columns", "name,tags"))

    for bad in ('a"b', "-x", "a" * 64, "é"):
        refused = demo.ush("tag", "add", "db-1", "--", bad)
        assert refused.returncode == 1 and "invalid tag" in refused.stderr, refused.stderr
    many = [f"t{i}" for i in range(33)]
    refused = demo.ush("create", "--names", "many", *[w for t in many for w in ("--tag", t)])
    assert refused.returncode == 1 and "at most 32 tags" in refused.stderr
    refused = demo.ush("start", "--cluster", "demo", "--tag", "x")
    assert refused.returncode == 2 and "ush create" in refused.stderr


def test_rename_keeps_the_vm_and_refuses_a_taken_or_bad_name(demo: Cluster) -> None:
    before = json.loads(ok(demo.ush("show", "demo-1", "-o", "json")))
    ok(demo.ush("rename", "demo-1", "front-1"))
    after = json.loads(ok(demo.ush("show", "front-1", "-o", "json")))
    assert (after["id"], after["state"]) == (before["id"], "running")
    assert demo.ush("show", "demo-1").returncode == 1
    ok(demo.ush("stop", "front-1"))  # the new name works for operations
    taken = demo.ush("rename", "front-1", "demo-2")
    assert taken.returncode == 1 and "'demo-2' is taken" in taken.stderr
    for bad in ("vm-0123456789ab", "a b", "x" * 64):
        refused = demo.ush("rename", "front-1", bad)
        assert refused.returncode == 1 and "invalid" in refused.stderr, refused.stderr
    events = json.loads(ok(demo.ush("events", "--vm", "front-1", "-o", "json")))
    [change] = [e for e in events if e["name"] == "vm_change"]
    assert change["data"] == {"name": "front-1", "old_name": "demo-1", "tags": []}


def test_two_renames_to_one_name_at_once_give_it_to_one_vm(demo: Cluster) -> None:
    client = demo.client()

    def rename(vm: str) -> int:
        return demo.http("PATCH", f"/v1/vms/{vm}", json={"name": "same"}).status_code

    def create() -> int:
        return demo.http("POST", "/v1/vms", json={"names": ["same"]}).status_code

    with ThreadPoolExecutor(5) as pool:
        renames = [pool.submit(rename, f"demo-{i}") for i in range(1, 5)]
        created = pool.submit(create)
        results = sorted([f.result() for f in renames] + [created.result()])
    assert results in ([200, 409, 409, 409, 409], [202, 409, 409, 409, 409]), results
    assert [vm.name for vm in client.iter_vms()].count("same") == 1


def test_a_change_waits_for_a_running_step_then_says_busy(make_cluster: Any) -> None:
    """A rename never lands in the middle of a step (which would write its older copy of
    the VM over it): it waits a few seconds for the step, then is refused as busy."""
    cluster = make_cluster(nodes=1, lnm_options={"driver_options": {"latency": {"stop": 8}}})
    ok(cluster.ush("create", "--names", "slow"))
    ok(cluster.ush("stop", "slow", "--no-wait"))
    busy = cluster.ush("rename", "slow", "quick")
    assert busy.returncode == 1 and "busy with an operation" in busy.stderr, busy.stderr
    ok(cluster.ush("wait", json.loads(ok(cluster.ush("ops", "-o", "json")))[0]["id"]))
    ok(cluster.ush("rename", "slow", "quick"))
    assert (
        states(cluster) == {}
        and json.loads(ok(cluster.ush("show", "quick", "-o", "json")))["state"] == "stopped"
    )


def test_image_import_takes_raw_and_qcow2_and_replaces_on_request(
    cluster: Cluster, tmp_path: Path
) -> None:
    raw = tmp_path / "cloud.raw"
    raw.write_bytes(bytes(range(256)) * 32768)  # 8 MiB, no format's magic: a raw disk
    imported = json.loads(
        ok(cluster.ush("image", "import", str(raw), "--name", "cloud", "-o", "json"))
    )
    assert (imported["name"], imported["files"]) == ("cloud", {"disk": "disk.qcow2"})
    qcow2 = tmp_path / "other.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "64M"], check=True)
    again = cluster.ush("image", "import", str(qcow2), "--name", "cloud")
    assert again.returncode == 1 and "image cloud already exists" in again.stderr
    replaced = ok(
        cluster.ush("image", "import", str(qcow2), "--name", "cloud", "--replace", "-o", "json")
    )
    assert json.loads(replaced)["size_bytes"] != imported["size_bytes"]
    mismatch = cluster.ush("image", "import", str(raw), "--name", "x", "--format", "qcow2")
    assert mismatch.returncode == 1
    assert "the upload for image x is a raw disk, not qcow2" in mismatch.stderr, mismatch.stderr
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "16M"], check=True)
    refused = cluster.ush("image", "import", str(vmdk), "--name", "y")
    assert refused.returncode == 1 and "is a vmdk disk" in refused.stderr
    assert {i["name"] for i in json.loads(ok(cluster.ush("images", "-o", "json")))} >= {"cloud"}
    ok(cluster.ush("create", "--names", "from-cloud", "--image", "cloud"))


def test_image_import_shows_its_progress_on_a_terminal(cluster: Cluster, tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    big.write_bytes(b"\1" * (24 << 20))
    command = shlex.join(
        [sys.executable, "-m", "usher.cli.ush", "image", "import", str(big), "--name", "big"]
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "USHER_URL": cluster.url,
        "USHER_TOKEN": cluster.token,
        "USHER_HOME": str(cluster.root / "home"),
        "COLUMNS": "120",
        "TERM": "xterm",
    }
    if cluster.tls:
        env["USHER_CA_FILE"] = str(cluster.ca)
    done = subprocess.run(  # script(1) gives ush a terminal, as a user has
        ["script", "-qec", command, "/dev/null"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout
    assert "uploading" in done.stdout and "25.2 MB" in done.stdout, done.stdout[-2000:]


def test_a_second_stop_while_the_first_runs_waits_and_skips(make_cluster: Any) -> None:
    """Two users stop one VM a moment apart: the second is not refused because the VM is
    `stopping`; its step waits for the first one's and finds the VM stopped already."""
    cluster = make_cluster(nodes=1, lnm_options={"driver_options": {"latency": {"stop": 3}}})
    ok(cluster.ush("create", "--names", "twice"))
    ok(cluster.ush("stop", "twice", "--no-wait"))
    second = cluster.ush("stop", "twice", "-o", "json")
    assert second.returncode == 0, second.stderr
    op = json.loads(second.stdout)
    assert op["status"] == "succeeded"
    assert op["result"]["progress"]["skipped"] == 1
    assert list(op["result"]["skipped"].values()) == ["twice is stopped already"]
    events = json.loads(ok(cluster.ush("events", "--vm", "twice", "-o", "json")))
    stops = [e for e in events if e["name"] == "stop" and e["operation_id"] == op["id"]]
    assert [e["data"] for e in stops] == [{"skipped": "twice is stopped already"}]
    strict = cluster.ush("stop", "twice", "--strict")  # stopped already: refused, as asked
    assert strict.returncode == 1 and "nothing was changed" in strict.stderr
    # a hard stop does not queue behind a graceful one (it would not be hard): refused
    ok(cluster.ush("start", "twice"))
    ok(cluster.ush("stop", "twice", "--no-wait"))
    hard = cluster.ush("stop", "twice", "--force")
    assert hard.returncode == 1 and "twice is stopping" in hard.stderr, hard.stderr


def test_vms_on_a_node_that_cannot_take_the_action_are_refused_alone(make_cluster: Any) -> None:
    """node-2 plays a hypervisor that cannot pause: its VMs are refused each alone, the
    others pause; with --strict, or when no VM is left, nothing is changed."""
    cluster = make_cluster(nodes=1)
    cluster.start_lnm("node-2", driver_options={"capabilities": ["console"]})
    cluster.wait_node("node-2", connected=True)
    ok(cluster.ush("create", "--names", "can", "--node", "node-1", "--cluster", "mixed"))
    ok(cluster.ush("create", "--names", "cannot", "--node", "node-2", "--cluster", "mixed"))
    strict = cluster.ush("pause", "--cluster", "mixed", "--strict")
    assert strict.returncode == 1
    assert "cannot pause cannot: the fake driver of node node-2 cannot pause" in strict.stderr
    assert states(cluster, "mixed") == {"can": "running", "cannot": "running"}
    result = cluster.ush("pause", "--cluster", "mixed", "-o", "json")
    assert result.returncode == 1  # not every VM could be paused
    op = json.loads(result.stdout)
    assert list(op["result"]["errors"].values()) == [
        "cannot pause cannot: the fake driver of node node-2 cannot pause"
    ]
    assert states(cluster, "mixed") == {"can": "paused", "cannot": "running"}
    alone = cluster.ush("pause", "cannot")
    assert alone.returncode == 1 and "nothing was changed" in alone.stderr
