"""A source whose column reads take a while: phases then outlive their lease's term.

Used by the lease tests in-process (`SlowColumns` as `run`'s source factory) and by
`lease_child.py`, which runs plan and one slow column batch as phases in a child process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Self

import pyarrow as pa

from metatide.extractor.core.ids import TableKey
from metatide.extractor.core.scope import Scope
from metatide.extractor.sources import ColumnsResult, Source


class SlowColumns:
    """Delegates to a real source; `columns` first sleeps `seconds`."""

    def __init__(self, inner: Source, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._inner.__aexit__(*exc_info)

    async def clock(self):  # type: ignore[no-untyped-def]
        return await self._inner.clock()

    async def databases(self, scope: Scope) -> pa.Table:
        return await self._inner.databases(scope)

    async def schemas(self, databases: Sequence[str], scope: Scope) -> pa.Table:
        return await self._inner.schemas(databases, scope)

    async def tables(self, schemas: pa.Table, scope: Scope) -> pa.Table:
        return await self._inner.tables(schemas, scope)

    async def columns(self, tables: Sequence[TableKey]) -> ColumnsResult:
        await asyncio.sleep(self._seconds)
        return await self._inner.columns(tables)
