"""Reading the JSON files memlab writes (headers, plans, tokenizer metadata): a damaged one is a MemlabError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memlab.errors import MemlabError


def read_json_object(path: str | Path, advice: str = "") -> dict[str, Any]:
    """The JSON object in ``path``; a file that is not JSON text or holds no object is one clear
    error naming it, followed by ``advice`` (e.g. "; prepare the data again")."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MemlabError(f"{path} is corrupt (not JSON: {e}){advice}") from None
    if not isinstance(data, dict):
        raise MemlabError(f"{path} is corrupt (not a JSON object){advice}")
    return data
