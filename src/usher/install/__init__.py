"""Installing Usher's daemons on a site's hosts as systemd services (``usher install``).

:mod:`usher.install.units` renders the unit files shipped beside this module,
:mod:`usher.install.configs` writes the daemons' TOML configs and :mod:`usher.install.host`
does the host's part (the service user, directories, files written whole). ``docs/deploy.md``
is the walk-through that uses them.
"""
