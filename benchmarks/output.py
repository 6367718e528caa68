"""How every benchmark ends: its result as indented JSON on stdout and, with --out, in a file."""

import json
import os


def emit(result: dict, out: str | None) -> None:
    """Prints `result` and writes it to `out` (folders made as needed) when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(text + "\n")
