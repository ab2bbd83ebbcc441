"""The committed state and a run's files on the store: the manifest (the commit point), the
marker, the bucketed Parquet files, the run lease, garbage collection and verification. Reads
and writes go through the `Store` seam; nothing here knows which phase calls it."""
