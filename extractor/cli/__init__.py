"""The ``metatide`` command (``app``), its terminal views, the demo and the generated spec
reference."""
