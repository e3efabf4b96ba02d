"""Query and path parameters the routes share, each bounded (see :mod:`usher.bounds`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator

from usher.bounds import NAME_PATTERN, PRINCIPAL_PATTERN, check_tags

RefPath = Annotated[str, Path(pattern=NAME_PATTERN, description="an id or a name")]
FilterRef = Annotated[str | None, Query(pattern=NAME_PATTERN)]
"""A filter by the name (or id) of a VM, cluster, node or image."""
FilterPrincipal = Annotated[str | None, Query(pattern=PRINCIPAL_PATTERN)]
Cursor = Annotated[str | None, Query(max_length=40, description="the `next` of the page before")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Since = Annotated[float | None, Query(ge=0, le=1e12, allow_inf_nan=False)]
FilterTags = Annotated[
    list[str] | None,
    Query(description="only VMs with every tag given (repeat it: tag=a&tag=b)"),
    AfterValidator(lambda tags: None if tags is None else check_tags(tags)),
]
