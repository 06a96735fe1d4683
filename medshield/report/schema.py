"""The published JSON Schema of ``audit.json`` (``medshield/report/audit.schema.json``) and its version.

Version ``1.x``: additive changes (new fields, new sections) bump the minor number and stay valid under
the schema; a change that removes or re-means a field bumps the major number.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).with_name("audit.schema.json")


@lru_cache(maxsize=1)
def audit_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate_audit(res: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``res`` does not follow the published schema
    (needs the ``jsonschema`` package, a test dependency)."""
    import jsonschema

    jsonschema.validate(res, audit_schema())
