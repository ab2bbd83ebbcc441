"""metatide Kubernetes operator."""
