"""Backups of the controller's state (``usher backup`` and ``usher restore``): ``archive``,
the backup file; ``databases``, dumping and restoring SQLite and PostgreSQL; ``run``, what a
backup holds and how a restore puts it back."""
