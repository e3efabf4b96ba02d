"""The web dashboard served at ``/ui`` (static files in ``static/``)."""
