"""Test-wide guards: warnings are errors (pyproject) and no asyncio task may leak."""

from __future__ import annotations

import os

os.environ.setdefault("METATIDE_LOG_FORMAT", "console")
