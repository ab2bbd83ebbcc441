"""metatide extraction engine, one folder per layer (pyproject's import-linter contracts
enforce the order; each layer imports only the ones below it):

- ``cli/``: the ``metatide`` command, its terminal views, the demo, generated spec docs;
- ``phases/``: plan, columns, finalize, and ``run`` chaining them in one process;
- ``engine/``: the set work in DuckDB: classification, the new state, diffs, change records,
  history;
- ``state/``: the committed state and a run's files on the store: manifest, marker, lease,
  bucketed Parquet, garbage collection;
- ``sources/`` and ``storage/``: the adapters to databases and object stores;
- ``core/``: what every layer shares: the spec, record schemas, ids, errors, logs.
"""
