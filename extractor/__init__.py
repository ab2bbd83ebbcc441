"""metatide extraction engine."""
