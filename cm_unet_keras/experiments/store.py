"""Records of finished runs, one JSON line each, appended as runs finish:
a restarted sweep or benchmark reads them and skips what is done."""

import json
import os
from pathlib import Path

from cm_unet_keras.core.files import json_safe


def read_jsonl(path, key):
    """The records of a JSONL file by `key(record)`; a torn last line (a
    kill while appending) is skipped, a missing file is no records."""
    path = Path(path)
    records = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            records[key(record)] = record
    return records


def append_jsonl(path, record):
    """Append `record` as one JSON line (NaN as null), flushed to disk."""
    with open(path, "a") as stream:
        stream.write(json.dumps(json_safe(record)) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
