"""The LDAP client settings a guest of a virtual cluster gets (the ``ldap_clusters`` plugin's
``guest_config``): Debian's nslcd (``nslcd``, ``libnss-ldapd``, ``libpam-ldapd``).

* Names (NSS ``passwd`` and ``group``) come from the cluster's branch: its people (uid,
  uidNumber, gidNumber, home, shell) and its groups ``admin`` and ``members``.
* Passwords are checked against the person's own entry in the site's directory: ``base
  passwd`` lists the site's people first, so when nslcd looks a login name up to bind (it
  binds as the first entry it finds) it finds the site entry and binds there with the
  password typed; for names (``getent passwd``) it returns entries with a ``uidNumber``, so
  a site entry without one is passed over and the branch's entry answers. (A site whose
  people carry POSIX attributes of their own gets those instead of the branch's.)
* Only the cluster's members may log in: ``pam_authz_search`` asks for the branch's
  ``members`` group with the login name in ``memberUid``; anyone else is refused by PAM even
  with the right password.

Written with cloud-init: the packages, ``/etc/nslcd.conf`` (mode 0600: it may hold the
guests' read password) after the packages are installed (``defer``), ``ldap`` added to the
``passwd`` and ``group`` lines of ``/etc/nsswitch.conf``, home directories made at first login
(``pam_mkhomedir``), SSH password logins allowed, nslcd restarted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PACKAGES = ["nslcd", "libnss-ldapd", "libpam-ldapd"]
AUTHZ_FILTER = "(&(objectClass=posixGroup)(cn=members)(memberUid=$username))"
NSSWITCH = (
    "grep -q '^passwd:.*ldap' /etc/nsswitch.conf || "
    "sed -i -E 's/^(passwd|group):(.*)$/\\1:\\2 ldap/' /etc/nsswitch.conf"
)


@dataclass(frozen=True)
class GuestDirectory:
    """What a guest's nslcd is told."""

    url: str
    branch_dn: str
    people_dn: str  # the branch's people
    groups_dn: str  # the branch's groups
    site_people: str | None  # where the site's own entries are (None: no password logins)
    site_filter: str  # what a site person entry is, e.g. (objectClass=inetOrgPerson)
    bind_dn: str | None = None  # how nslcd reads the directory (None: anonymously)
    bind_password: str | None = None


def nslcd_conf(d: GuestDirectory, cluster: str) -> str:
    """``/etc/nslcd.conf`` for a guest of ``cluster``."""
    lines = [
        f"# written by Usher (plugin ldap_clusters) for virtual cluster {cluster}",
        "uid nslcd",
        "gid nslcd",
        f"uri {d.url}",
        f"base {d.branch_dn}",
    ]
    if d.site_people is not None:
        lines.append(f"base passwd {d.site_people}")
    lines += [
        f"base passwd {d.people_dn}",
        f"base group {d.groups_dn}",
        f"filter passwd (|(objectClass=posixAccount){d.site_filter})",
        "filter group (objectClass=posixGroup)",
        f"pam_authz_search {AUTHZ_FILTER}",
    ]
    if d.bind_dn is not None:
        lines.append(f"binddn {d.bind_dn}")
        if d.bind_password is not None:
            lines.append(f"bindpw {d.bind_password}")
    return "\n".join(lines) + "\n"


def cloud_config(d: GuestDirectory, cluster: str) -> dict[str, Any]:
    """The cloud-config that installs and configures nslcd for ``cluster``."""
    return {
        "packages": list(PACKAGES),
        "write_files": [
            {
                "path": "/etc/nslcd.conf",
                "permissions": "0600",
                "owner": "root:root",
                "content": nslcd_conf(d, cluster),
                "defer": True,
            }
        ],
        "ssh_pwauth": True,
        "runcmd": [
            ["sh", "-c", NSSWITCH],
            ["pam-auth-update", "--enable", "mkhomedir"],
            ["systemctl", "restart", "nslcd"],
        ],
    }
