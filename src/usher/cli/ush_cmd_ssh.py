"""``ush ssh VM [-- COMMAND]``: log into a VM's guest with SSH, as yourself, with your key.

The controller says where (``GET /v1/vms/{vm}/ssh``): the VM's address, or the port its node
forwards to the guest's port 22 when the VM is on user-mode networking (the quick start). The
guest's host key is remembered per VM (``HostKeyAlias`` = the VM's id) in
``$USHER_HOME/known_hosts``: it is accepted the first time and checked from then on.
"""

from __future__ import annotations

import os
import shutil

import click

from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_names import complete_vm_names
from usher.client.config import usher_home
from usher.model import SSHAccess


def ssh_argv(
    access: SSHAccess,
    *,
    identity: str | None,
    user: str | None,
    known_hosts: str,
    options: tuple[str, ...],
    command: tuple[str, ...],
) -> list[str]:
    """The ``ssh`` command line that logs into ``access``."""
    argv = [
        "ssh",
        *("-p", str(access.port)),
        *("-o", f"HostKeyAlias={access.vm_id}"),
        *("-o", "StrictHostKeyChecking=accept-new"),
        *("-o", f"UserKnownHostsFile={known_hosts}"),
    ]
    if identity:
        argv += ["-i", identity]
    for option in options:
        argv += ["-o", option]
    argv += [f"{user or access.user}@{access.host}"]
    if command:
        argv += ["--", *command]
    return argv


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("vm", shell_complete=complete_vm_names)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-i", "--identity", type=click.Path(dir_okay=False), help="Private key file.")
@click.option("-l", "--login", "user", help="Account to log in as (default: your own).")
@click.option(
    "--ssh-option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An ssh -o option. Repeatable.",
)
@click.option("--print", "print_only", is_flag=True, help="Print the ssh command; do not run it.")
@pass_ush
def ssh(
    ush: Ush,
    vm: str,
    command: tuple[str, ...],
    identity: str | None,
    user: str | None,
    options: tuple[str, ...],
    print_only: bool,
) -> None:
    """Log into VM's guest with SSH, or run COMMAND there (after `--`)."""
    access = ush.client.ssh_access(vm)
    home = usher_home()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    argv = ssh_argv(
        access,
        identity=identity,
        user=user,
        known_hosts=str(home / "known_hosts"),
        options=options,
        command=command,
    )
    if print_only or ush.out.json:
        if ush.out.json:
            ush.out.emit({**access.model_dump(mode="json"), "argv": argv})
        else:
            click.echo(" ".join(argv))
        return
    if shutil.which("ssh") is None:
        raise click.ClickException("ssh is not installed (Debian: apt install openssh-client)")
    os.execvp("ssh", argv)


COMMANDS: tuple[click.Command, ...] = (ssh,)
