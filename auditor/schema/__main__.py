"""`python -m auditor.schema`: rewrite results.schema.json from the dataclasses in auditor/results.py."""

from auditor.schema import SCHEMA_FILE, write

write()
print(f"wrote {SCHEMA_FILE}")
