"""The set work over states, in DuckDB: classifying tables, building the new state, the diff,
change records, the mass-delete guard and the history of kept states. Phases call it; it reads
and writes through ``state/``."""
