"""metatide: incremental SQL metadata extraction (extractor engine + Kubernetes operator)."""
