"""The PostgreSQL source's rows as Arrow tables (`postgres.py` reads them from the server).

The listing's records become a TABLE_SCHEMA table; a column batch arrives as COPY's CSV and
becomes a COLUMN_SCHEMA table without its rows ever being Python objects (a third faster
than a cursor for 200,000 columns).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from metatide.extractor.core.records import COLUMN_SCHEMA, TABLE_SCHEMA

_COLUMN_FIELDS: Final = list(COLUMN_SCHEMA)[3:]
"""COLUMN_SCHEMA's fields after database, schema and table: what `postgres_sql.COLUMNS` returns."""


def table_rows(database: str, rows: Sequence[Any]) -> pa.Table:
    """`postgres_sql.TABLES` records as a TABLE_SCHEMA table."""
    fields = list(zip(*rows, strict=True)) if rows else [()] * 7
    schema_names, table_names, types, comments, definitions, fingerprints, oids = fields
    count = len(rows)
    arrays = [
        [database] * count,
        schema_names,
        table_names,
        types,
        comments,
        definitions,
        [None] * count,  # created_at: PostgreSQL keeps no DDL times
        [None] * count,  # ddl_time
        fingerprints,
        oids,  # survives RENAME and SET SCHEMA: renames are found by it
    ]
    return pa.Table.from_arrays(
        [pa.array(values, type=f.type) for values, f in zip(arrays, TABLE_SCHEMA, strict=True)],
        schema=TABLE_SCHEMA,
    )


@dataclass(frozen=True, slots=True)
class ColumnNames:
    """The relations one `postgres_sql.COLUMNS` query reads: oids and names, in output order."""

    database: str
    oids: pa.Array
    schemas: pa.Array
    tables: pa.Array

    def column_batch(self, rows: pa.Table) -> pa.Table:
        """`postgres_sql.COLUMNS` rows (relation oid, then the column fields) as a COLUMN_SCHEMA
        table, ordered by relation (in `oids` order) and ordinal position."""
        rows = rows.append_column(
            "position", pc.index_in(rows.column("relation"), value_set=self.oids)
        ).sort_by([("position", "ascending"), ("ordinal_position", "ascending")])
        index = rows.column("position")
        arrays = [
            pa.repeat(pa.scalar(self.database, type=pa.string()), rows.num_rows),
            self.schemas.take(index),
            self.tables.take(index),
        ]
        arrays += [
            rows.column(position + 1).cast(field.type)
            for position, field in enumerate(_COLUMN_FIELDS)
        ]
        return pa.Table.from_arrays(arrays, schema=COLUMN_SCHEMA)


_CSV_COLUMNS: Final = ["relation", *(field.name for field in _COLUMN_FIELDS)]


def read_csv(data: bytes) -> pa.Table:
    """PostgreSQL's CSV: NULL is an unquoted empty field, '' a quoted one, booleans t/f."""
    types = {"relation": pa.int64(), **{field.name: field.type for field in _COLUMN_FIELDS}}
    if not data:  # relations without columns (or none at all): Arrow refuses an empty file
        return pa.schema([pa.field(name, types[name]) for name in _CSV_COLUMNS]).empty_table()
    return pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=_CSV_COLUMNS),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )
