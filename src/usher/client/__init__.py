"""The Usher client API: what every client of the controller uses.

>>> from usher.client import Client
>>> with Client() as usher:                      # URL and token from env or ~/.usher
...     op = usher.create_vms(count=4, cluster="web")
...     op = usher.wait(op, on_progress=print)
"""

from usher.client.async_ import AsyncClient
from usher.client.errors import UsherConnectionError, UsherError
from usher.client.sync import Client

__all__ = ["AsyncClient", "Client", "UsherConnectionError", "UsherError"]
