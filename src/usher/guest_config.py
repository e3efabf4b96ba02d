"""A guest's configuration as plugins build it, and the cloud-init NoCloud seed it becomes.

For a VM whose image runs cloud-init, the controller makes a :class:`GuestConfig` at every
start, sets its hostname and its owner's account, and hands it to each plugin's
``guest_config`` hook in configured order (:mod:`usher.hookspecs`); :meth:`GuestConfig.seed`
is what the node writes into the VM's NoCloud seed. The merge rules:

* **accounts** (:meth:`GuestConfig.add_user`): one per account name; adding one again adds
  its keys and groups (each once) and gives sudo if either asked for it;
* **network** (:meth:`GuestConfig.set_network`): cloud-init's network config, version 2; the
  first plugin to set it wins, a later one is refused with :class:`ConfigConflict`;
* **anything else cloud-init understands** (:meth:`GuestConfig.merge`): mappings are merged
  key by key, lists extended (an item already there is not added again), and a value already
  set is kept: a different one is refused with :class:`ConfigConflict` (plugins run in
  configured order, so the first one's value stands);
* the user's own user data (the ``user_data`` kwarg, ``ush create --user-data``) goes to the
  guest as a part of its own before the plugins' part, which cloud-init merges over it: a
  site's accounts and settings win over a user's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

MAX_KEY_CHARS = 16 * 1024
"""Longest SSH public key line accepted (an RSA key of 16384 bits is about 2,800)."""
MAX_USER_DATA = 48 * 1024
"""Most bytes of a user's own user data (it travels in the VM's kwargs)."""
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
SUDO_ALL = "ALL=(ALL) NOPASSWD:ALL"
PLUGIN_PART_MERGE = "list(append)+dict(recurse_array,replace)+str()"
"""How cloud-init merges the plugins' part over the user's own (``Merge-Type``)."""
USER_DATA_STARTS = ("#cloud-config", "#!")

SYSTEM_ACCOUNTS = frozenset(
    [
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "gnats",
        "nobody",
        "nogroup",
        "sshd",
        "messagebus",
        "polkitd",
        "tss",
        "sudo",
        "staff",
        "users",
        "adm",
        "wheel",
        "debian",
        "cloud",
        "ubuntu",
    ]
)
"""Accounts (and groups) a guest has or a distribution reserves: a principal of such a name
gets ``u_<name>`` instead, so no plugin ever changes a system account."""
_ACCOUNT_BAD = re.compile(r"[^a-z0-9_-]")
_HOSTNAME_BAD = re.compile(r"[^A-Za-z0-9-]")
_COMMENT_OK = re.compile(r"[ -~]*")


class ConfigConflict(ValueError):
    """Two plugins set one part of a guest's configuration to different values."""


def account_name(principal: str) -> str:
    """The Linux account a principal gets in guests: the principal's name where it is one
    (``a-z 0-9 _ -``, at most 32 characters, starting with a letter, not a system account of
    :data:`SYSTEM_ACCOUNTS` or ``systemd-*``); otherwise that name made one (lower case,
    other characters as ``_``, ``u_`` in front where needed) with ``_`` and 6 hex digits of
    the principal's hash at the end, so two principals never share an account
    (``john.smith`` and ``john_smith``, ``Alice`` and ``alice``)."""
    name = _ACCOUNT_BAD.sub("_", principal.lower())
    if not name[:1].isalpha() or name in SYSTEM_ACCOUNTS or name.startswith("systemd-"):
        name = f"u_{name}"
    if name == principal and len(name) <= 32:
        return name
    digest = hashlib.sha256(principal.encode()).hexdigest()[:6]
    return f"{name[:25]}_{digest}"


def hostname_of(name: str) -> str:
    """A host name for a VM named ``name``: characters other than letters, digits and ``-``
    as ``-``, at most 63, no ``-`` at either end."""
    return _HOSTNAME_BAD.sub("-", name)[:63].strip("-") or "vm"


def check_ssh_key(line: str) -> str:
    """``line`` as one SSH public key (``TYPE BASE64 [COMMENT]``), normalized; ValueError with
    what is wrong otherwise."""
    if len(line) > MAX_KEY_CHARS:
        raise ValueError(f"an SSH public key is at most {MAX_KEY_CHARS} characters")
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        raise ValueError(
            "an SSH public key reads 'TYPE BASE64 [COMMENT]', e.g. 'ssh-ed25519 AAAA…'"
        )
    kind, blob, comment = parts[0], parts[1], parts[2] if len(parts) > 2 else ""
    if kind not in KEY_TYPES:
        raise ValueError(
            f"unknown SSH key type {kind[:40]!r}; use one of {', '.join(sorted(KEY_TYPES))}"
        )
    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error:
        raise ValueError("the SSH key's data is not base64") from None
    if len(raw) < 4 or raw[4 : 4 + int.from_bytes(raw[:4], "big")] != kind.encode():
        raise ValueError(f"the SSH key's data is not a {kind} key")
    if not _COMMENT_OK.fullmatch(comment):
        raise ValueError("an SSH key's comment is printable ASCII on one line")
    return f"{kind} {blob} {comment}".strip()


def fingerprint(key: str) -> str:
    """OpenSSH's fingerprint of a public key: ``SHA256:`` and the unpadded base64 digest."""
    digest = hashlib.sha256(base64.b64decode(key.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def check_user_data(text: str) -> str:
    """A user's own user data: cloud-config or a script, bounded; ValueError otherwise."""
    if len(text.encode()) > MAX_USER_DATA:
        raise ValueError(f"user data is at most {MAX_USER_DATA} bytes")
    if not text.startswith(USER_DATA_STARTS):
        raise ValueError("user data starts with '#cloud-config' or '#!' (a script)")
    if "\x00" in text:
        raise ValueError("user data is text: it has a NUL character")
    return text


class GuestConfig:
    """One VM's guest configuration, built up by the ``guest_config`` hook (merge rules in
    the module documentation). ``instance_id`` is the VM's id: cloud-init runs its
    once-per-instance steps (accounts, host keys, growing the disk) on the first boot only."""

    def __init__(self, instance_id: str, hostname: str, user_data: str | None = None) -> None:
        self.instance_id = instance_id
        self.hostname = hostname
        self.fqdn: str | None = None
        self.user_data = user_data
        self._users: dict[str, dict[str, Any]] = {}
        self._network: dict[str, Any] | None = None
        self._cloud: dict[str, Any] = {}

    @property
    def users(self) -> dict[str, dict[str, Any]]:
        """The accounts so far, by name (read only: add with :meth:`add_user`)."""
        return {name: dict(user) for name, user in self._users.items()}

    @property
    def network(self) -> dict[str, Any] | None:
        return self._network

    def add_user(
        self,
        name: str,
        *,
        keys: Iterable[str] = (),
        sudo: bool = False,
        groups: Iterable[str] = (),
    ) -> None:
        """An account ``name`` (see :func:`account_name`) logging in with ``keys``."""
        if account_name(name) != name:
            raise ValueError(f"{name!r} is not an account name; use account_name()")
        user = self._users.setdefault(
            name,
            {"name": name, "shell": "/bin/bash", "lock_passwd": True, "keys": [], "groups": []},
        )
        _extend(user["keys"], (check_ssh_key(k) for k in keys))
        _extend(user["groups"], groups)
        user["sudo"] = bool(user.get("sudo")) or sudo

    def set_network(self, config: Mapping[str, Any]) -> None:
        """The guest's network, as cloud-init's network config version 2 (``ethernets``
        matched by MAC address, say); ConfigConflict if another plugin set a different one."""
        if dict(config).get("version") != 2:
            raise ValueError("network config must be version 2")
        if self._network is not None and self._network != dict(config):
            raise ConfigConflict("the guest's network is already configured by another plugin")
        self._network = json.loads(json.dumps(config))

    def merge(self, part: Mapping[str, Any]) -> None:
        """Merge ``part`` (cloud-config keys) into the configuration by the module's rules;
        ``users`` go through :meth:`add_user`-like rules, ``hostname`` is :attr:`hostname`."""
        part = json.loads(json.dumps(part))  # JSON only, and a copy the caller cannot change
        for reserved in ("users", "hostname", "fqdn"):
            if reserved in part:
                raise ValueError(f"set {reserved!r} through GuestConfig, not merge()")
        _merge_into(self._cloud, part, "")

    def cloud_config(self) -> dict[str, Any]:
        """The plugins' cloud-config: what :meth:`merge` gathered, the hostname and accounts."""
        users = []
        for user in self._users.values():
            entry = {k: v for k, v in user.items() if k not in ("keys", "groups", "sudo")}
            if user["keys"]:
                entry["ssh_authorized_keys"] = list(user["keys"])
            if user["groups"]:
                entry["groups"] = ", ".join(user["groups"])
            if user["sudo"]:
                entry["sudo"] = SUDO_ALL
            users.append(entry)
        config = dict(self._cloud)
        config.update(hostname=self.hostname, preserve_hostname=False, users=users)
        if self.fqdn:
            config["fqdn"] = self.fqdn
        return config

    def seed(self) -> dict[str, Any]:
        """What the node writes into the NoCloud seed: ``meta_data``, ``user_data`` (text)
        and ``network_config`` (None: cloud-init's default, DHCP on the first NIC)."""
        ours = "#cloud-config\n" + json.dumps(self.cloud_config(), indent=1, sort_keys=True)
        user_data = ours if self.user_data is None else _multipart(self.user_data, ours)
        return {
            "meta_data": {"instance-id": self.instance_id, "local-hostname": self.hostname},
            "user_data": user_data,
            "network_config": self._network,
        }


def _extend(into: list[str], items: Iterable[str]) -> None:
    for item in items:
        if item not in into:
            into.append(item)


def _merge_into(into: dict[str, Any], part: Mapping[str, Any], where: str) -> None:
    for key, value in part.items():
        path = f"{where}.{key}" if where else key
        if key not in into:
            into[key] = value
        elif isinstance(into[key], dict) and isinstance(value, dict):
            _merge_into(into[key], value, path)
        elif isinstance(into[key], list) and isinstance(value, list):
            into[key].extend(item for item in value if item not in into[key])
        elif into[key] != value:
            raise ConfigConflict(f"{path} is already set to {into[key]!r}")


def _multipart(theirs: str, ours: str) -> str:
    """The user's user data, then the plugins' cloud-config merged over it, as MIME."""
    message = MIMEMultipart()
    subtype = "cloud-config" if theirs.startswith("#cloud-config") else "x-shellscript"
    message.attach(MIMEText(theirs, subtype, "utf-8"))
    plugins = MIMEText(ours, "cloud-config", "utf-8")
    plugins["Merge-Type"] = PLUGIN_PART_MERGE
    message.attach(plugins)
    return message.as_string()
