"""Guest configuration by plugins: GuestConfig's merge rules, SSH keys, the seed a node gets
(seen through the fake guest's cloud-init report on its console), and ``ush ssh``."""

from __future__ import annotations

import email
import json
import re
import subprocess
from pathlib import Path

import pytest

from harness import Cluster, wait_for
from usher.guest_config import (
    MAX_USER_DATA,
    ConfigConflict,
    GuestConfig,
    account_name,
    check_ssh_key,
    check_user_data,
    fingerprint,
    hostname_of,
)
from usher.images import catalog


def keypair(directory: Path, name: str) -> str:
    """A new ed25519 key pair in ``directory``; its public key line."""
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
    )
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("keys")
    return {name: keypair(directory, name) for name in ("alice", "alice2", "bob")}


# --- the model -------------------------------------------------------------------------


def test_account_names_are_linux_accounts_and_never_shared() -> None:
    assert account_name("alice") == "alice" and account_name("bob-2") == "bob-2"
    changed = {
        "Alice.Smith@example.org": "alice_smith_example_org_",
        "7of9": "u_7of9_",
        "-x": "u_-x_",
        "root": "u_root_",
        "sshd": "u_sshd_",
        "systemd-network": "u_systemd-network_",
        "_apt": "u__apt_",
        "Alice": "alice_",
    }
    for principal, start in changed.items():
        name = account_name(principal)
        assert name.startswith(start[:25]) and re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name), name
    # no two principals share an account, however alike their names
    alike = ["john.smith", "john_smith", "John_Smith", "Alice", "alice", "root", "u_root",
             "a" * 40, "a" * 41, "a" * 32]  # fmt: skip
    assert len({account_name(p) for p in alike}) == len(alike)
    assert account_name("a" * 32) == "a" * 32 and len(account_name("a" * 200)) == 32
    assert hostname_of("web_1.prod") == "web-1-prod" and hostname_of("-x-") == "x"
    assert hostname_of("_") == "vm" and len(hostname_of("a" * 100)) == 63


def test_ssh_keys_are_checked(keys: dict[str, str]) -> None:
    key = keys["alice"]
    assert check_ssh_key(f"  {key}\n") == key
    kind, blob, _comment = key.split()
    assert (
        fingerprint(key)
        == subprocess.run(
            ["ssh-keygen", "-l", "-f", "-"], input=key, capture_output=True, text=True, check=True
        ).stdout.split()[1]
    )
    for bad, why in [
        ("", "TYPE BASE64"),
        ("ssh-ed25519", "TYPE BASE64"),
        (f"ssh-dss {blob}", "unknown SSH key type"),
        (f"{kind} not-base64!", "not base64"),
        (f"ssh-rsa {blob}", "not a ssh-rsa key"),
        (f"{kind} {blob} evil\x1b[2Jcomment", "printable ASCII"),
        (f"{kind} {'A' * 20000}", "at most"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_ssh_key(bad)


def test_user_data_is_checked() -> None:
    assert check_user_data("#cloud-config\nruncmd: [true]\n")
    assert check_user_data("#!/bin/sh\necho hi\n")
    for bad, why in [
        ("runcmd: [true]", "starts with"),
        ("#cloud-config\n" + "x" * MAX_USER_DATA, "at most"),
        ("#!/bin/sh\n\x00", "NUL"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_user_data(bad)


def test_accounts_merge_by_name(keys: dict[str, str]) -> None:
    config = GuestConfig("vm-1", "web-1")
    config.add_user("alice", keys=[keys["alice"]])
    config.add_user("alice", keys=[keys["alice"], keys["alice2"]], sudo=True, groups=["adm"])
    config.add_user("bob", keys=[keys["bob"]])
    users = {u["name"]: u for u in config.cloud_config()["users"]}
    assert users["alice"]["ssh_authorized_keys"] == [keys["alice"], keys["alice2"]]
    assert users["alice"]["sudo"] == "ALL=(ALL) NOPASSWD:ALL" and users["alice"]["groups"] == "adm"
    assert "sudo" not in users["bob"] and users["bob"]["lock_passwd"] is True
    with pytest.raises(ValueError, match="not an account name"):
        config.add_user("Bob Smith")
    with pytest.raises(ValueError, match="SSH"):
        config.add_user("carol", keys=["not a key"])


def test_cloud_config_merges_and_refuses_conflicts() -> None:
    config = GuestConfig("vm-1", "web-1")
    config.merge({"packages": ["nginx"], "ntp": {"servers": ["a"]}, "timezone": "UTC"})
    config.merge({"packages": ["nginx", "curl"], "ntp": {"servers": ["b"], "enabled": True}})
    config.merge({"timezone": "UTC"})  # the same value again is no conflict
    cloud = config.cloud_config()
    assert cloud["packages"] == ["nginx", "curl"]
    assert cloud["ntp"] == {"servers": ["a", "b"], "enabled": True}
    with pytest.raises(ConfigConflict, match="timezone is already set"):
        config.merge({"timezone": "Europe/Paris"})
    with pytest.raises(ConfigConflict, match=r"ntp\.enabled"):
        config.merge({"ntp": {"enabled": False}})
    with pytest.raises(ValueError, match="through GuestConfig"):
        config.merge({"users": []})
    net = {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}
    config.set_network(net)
    config.set_network(net)
    with pytest.raises(ConfigConflict, match="network"):
        config.set_network({"version": 2, "ethernets": {}})
    with pytest.raises(ValueError, match="version 2"):
        GuestConfig("vm-2", "x").set_network({"version": 1})


def test_the_seed_puts_the_users_part_first() -> None:
    config = GuestConfig("vm-1", "web-1", user_data="#!/bin/sh\necho mine\n")
    config.add_user("alice", sudo=True)
    seed = config.seed()
    assert seed["meta_data"] == {"instance-id": "vm-1", "local-hostname": "web-1"}
    assert seed["network_config"] is None
    parts = [p for p in email.message_from_string(seed["user_data"]).walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/x-shellscript", "text/cloud-config"]
    assert parts[0].get_payload(decode=True).decode() == "#!/bin/sh\necho mine\n"
    assert parts[1]["Merge-Type"] == "list(append)+dict(recurse_array,replace)+str()"
    ours = json.loads(parts[1].get_payload(decode=True).decode().removeprefix("#cloud-config\n"))
    assert ours["hostname"] == "web-1" and ours["users"][0]["name"] == "alice"
    plain = GuestConfig("vm-2", "db-1").seed()["user_data"]
    assert (
        plain.startswith("#cloud-config\n") and json.loads(plain.split("\n", 1)[1])["users"] == []
    )


# --- through a cluster (fake driver) ----------------------------------------------------


@pytest.fixture
def guests(make_cluster, tmp_path: Path) -> Cluster:
    """Two fake nodes, keys and authz, and an image ``cloudy`` imported as running cloud-init."""
    cluster = make_cluster(nodes=2, plugins=["keys", "authz"])
    disk = tmp_path / "cloudy.raw"
    disk.write_bytes(b"\0" * 65536)
    imported = cluster.ush("image", "import", str(disk), "--name", "cloudy", "--cloud-init")
    assert imported.returncode == 0, imported.stderr
    image = catalog.read_manifest(cluster.storage, "cloudy")
    assert image is not None and image.cloud_init
    return cluster


def report(cluster: Cluster, client, vm: str) -> str:
    """The fake guest's cloud-init line on its console."""
    lines = wait_for(
        f"the cloud-init report of {vm}",
        lambda: [
            line
            for line in client.console(vm).data.splitlines()
            if line.startswith("fake cloud-init:")
        ],
        timeout=20,
    )
    return lines[-1]


def test_guests_get_their_owners_and_members_accounts(
    guests: Cluster, keys: dict[str, str], tmp_path: Path
) -> None:
    alice_token = guests.issue_token("alice", ["user"])
    bob_token = guests.issue_token("bob", ["user"])
    alice, bob = guests.client(alice_token), guests.client(bob_token)
    (tmp_path / "alice.pub").write_text(keys["alice"] + "\n")
    (tmp_path / "extra.pub").write_text(f"# a comment\n{keys['alice2']}\n")
    as_alice = {"USHER_TOKEN": alice_token}
    added = guests.ush("key", "add", str(tmp_path / "alice.pub"), "-o", "json", env=as_alice)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)[0]["name"] == "alice"  # its comment
    again = guests.ush("key", "add", str(tmp_path / "alice.pub"), env=as_alice)
    assert again.returncode != 0 and "already registered" in again.stderr
    # bob's key, through the API; alice may not see it
    bob.request("POST", "/keys", body={"key": keys["bob"], "name": "laptop"})
    listed = guests.http("GET", "/v1/keys?owner=bob", token=alice_token)
    assert listed.status_code == 403
    refused = guests.http("POST", "/v1/keys", token=bob_token, json={"key": "ssh-ed25519 AAAA"})
    assert refused.status_code == 422 and "not a ssh-ed25519 key" in refused.text

    created = guests.ush(
        "create", "--image", "cloudy", "--cluster", "lab", "--ssh-key", str(tmp_path / "extra.pub"),
        env=as_alice,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    first = report(guests, alice, "lab-1")
    assert first == "fake cloud-init: hostname lab-1; users alice(2 keys, sudo); network dhcp"

    alice.request("PUT", "/clusters/lab/members/bob")
    guests.run(alice.create_vms(count=1, cluster="lab", image="cloudy"))
    second = report(guests, alice, "lab-2")
    assert "users alice(1 keys, sudo), bob(1 keys); network dhcp" in second
    # a VM of an image without cloud-init gets no seed at all
    guests.run(bob.create_vms(count=1, names=["plain"], image="tiny"))
    assert "fake BIOS" in bob.console("plain").data
    assert "cloud-init" not in bob.console("plain").data
    removed = guests.ush("key", "rm", "alice", env=as_alice)
    assert removed.returncode == 0, removed.stderr
    assert guests.ush("key", "list", "-o", "json", env=as_alice).stdout.strip() == "[]"
    events = [e.name for e in guests.client().iter_events() if e.name.startswith("key_")]
    assert events == ["key_add", "key_add", "key_remove"]


def test_users_own_user_data_and_bad_kwargs(guests: Cluster, tmp_path: Path) -> None:
    client = guests.client()
    (tmp_path / "ud").write_text("#cloud-config\nruncmd: [[touch, /tmp/mine]]\n")
    done = guests.ush(
        "create", "--image", "cloudy", "--names", "ud", "--user-data", str(tmp_path / "ud")
    )
    assert done.returncode == 0, done.stderr
    assert report(guests, client, "ud").endswith("network dhcp +user-data")
    assert client.get_vm("ud").spec.kwargs["user_data"].startswith("#cloud-config")
    (tmp_path / "bad").write_text("runcmd: [[true]]\n")
    refused = guests.ush("create", "--image", "cloudy", "--user-data", str(tmp_path / "bad"))
    assert refused.returncode != 0 and "user_data" in refused.stderr
    (tmp_path / "notakey").write_text("ssh-ed25519 AAAA\n")
    refused = guests.ush("create", "--image", "cloudy", "--ssh-key", str(tmp_path / "notakey"))
    assert refused.returncode != 0 and "ssh_keys[0]" in refused.stderr
    assert [vm.name for vm in guests.vms()] == ["ud"]


def test_ush_ssh_says_where_and_why_not(guests: Cluster) -> None:
    client = guests.client()
    guests.run(client.create_vms(count=1, names=["web"], image="cloudy"))
    # the fake node forwards no port and the VM has no address: a clear refusal
    result = guests.ush("ssh", "web", "--", "uname", "-a")
    assert result.returncode != 0
    assert "forwards no SSH port" in result.stderr
    missing = guests.ush("ssh", "nope")
    assert missing.returncode != 0 and "nope" in missing.stderr
