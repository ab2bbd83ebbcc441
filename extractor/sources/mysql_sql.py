"""The SQL texts of the MySQL and MariaDB source (`mysql.py` runs them).

Kept apart from the adapter, as for PostgreSQL, so that the statements read as one piece.
Every statement is prepared on the server: schema and table names are only ever bound
(`?`), never pasted in; the `{...}` holes are filled by mysql.py from this module's own
fragments and a fixed choice of views, never from a name.

The column fields come from one tuple (`COLUMN_EXPRESSIONS`) used both by the view
fingerprint (`FINGERPRINT`) and by the column reads: a change to any returned field changes
the fingerprint.
"""

from __future__ import annotations

from typing import Final

PIN_SESSION = """
SET SESSION time_zone = '+00:00', sql_mode = '', lock_wait_timeout = 30,
    group_concat_max_len = 1073741824
"""

CLOCK = "SELECT UTC_TIMESTAMP(6)"

SCHEMAS = """
SELECT SCHEMA_NAME, {comment} FROM information_schema.SCHEMATA
WHERE SCHEMA_NAME NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')
"""

RELATION_TYPES = "('BASE TABLE', 'VIEW', 'SYSTEM VERSIONED')"

TABLES = f"""
SELECT TABLE_NAME, TABLE_TYPE, CREATE_TIME, TABLE_COMMENT
FROM information_schema.TABLES
WHERE TABLE_SCHEMA = ? AND TABLE_TYPE IN {RELATION_TYPES}
"""

IS_RELATION = f" AND c.TABLE_TYPE IN {RELATION_TYPES}"

# InnoDB's table id survives RENAME TABLE (and instant ALTERs) but not a rebuild: the
# tables' object ids, for rename detection. InnoDB names tables `schema/table` in its
# filename encoding, which equals the SQL name only for [A-Za-z0-9_] names; other names get
# no id. Reading these views needs the PROCESS privilege: without it, no ids at all.
INNODB_TABLE_IDS: Final = {
    True: "SELECT NAME, TABLE_ID FROM information_schema.INNODB_SYS_TABLES WHERE NAME LIKE ?",
    False: "SELECT NAME, TABLE_ID FROM information_schema.INNODB_TABLES WHERE NAME LIKE ?",
}

VIEWS = "SELECT TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ?"


# The fields of one column, shared by the fingerprint and by columns(); the order is
# COLUMN_SCHEMA's from column_name on. A generated column's expression is its default, as
# in the PostgreSQL source; MariaDB reports a missing default of a nullable column as the
# text NULL (a string default is quoted), which is no default at all.
COLUMN_EXPRESSIONS: Final = (
    "c.COLUMN_NAME",
    "c.ORDINAL_POSITION",
    "c.COLUMN_TYPE",
    "c.IS_NULLABLE = 'YES'",
    "CASE WHEN c.GENERATION_EXPRESSION <> '' THEN c.GENERATION_EXPRESSION"
    " WHEN c.COLUMN_DEFAULT = BINARY 'NULL' THEN NULL ELSE c.COLUMN_DEFAULT END",
    "NULLIF(c.COLUMN_COMMENT, '')",
    "c.COLUMN_KEY = 'PRI'",
)
COLUMN_FIELDS = ",\n".join(COLUMN_EXPRESSIONS)

# Each field as an SQL literal (QUOTE escapes quotes and tells NULL from 'NULL'), the fields
# of a column joined by commas, the columns by semicolons, hashed: an unambiguous encoding,
# and measured twice as fast on MariaDB as JSON_ARRAY.
FINGERPRINT = (
    "SHA2(GROUP_CONCAT(CONCAT_WS(',', "
    + ", ".join(f"QUOTE({expression})" for expression in COLUMN_EXPRESSIONS)
    + ") ORDER BY c.ORDINAL_POSITION SEPARATOR ';'), 256)"
)

# One row per requested table (by position); the `?`s are: position, schema, table.
LOOKUP = """
SELECT ? AS i, {select} FROM information_schema.{view} AS c
WHERE c.TABLE_SCHEMA = ? AND c.TABLE_NAME = ?{extra}
"""

# Every relation and every column of one schema, for batches that want many of its tables.
SCHEMA_RELATIONS = f"""
SELECT c.TABLE_NAME FROM information_schema.TABLES AS c WHERE c.TABLE_SCHEMA = ?{IS_RELATION}
"""

TABLE_COLUMN_FIELDS = f"c.TABLE_NAME, {COLUMN_FIELDS}"

SCHEMA_COLUMNS = f"""
SELECT {TABLE_COLUMN_FIELDS} FROM information_schema.COLUMNS AS c WHERE c.TABLE_SCHEMA = ?
"""
