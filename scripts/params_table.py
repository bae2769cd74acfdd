"""Print the params reference (markdown) from params.yaml's own comments, for docs/parameters.md.

    python scripts/params_table.py > /tmp/params.md
"""

import re
from pathlib import Path

import yaml

SECTION = re.compile(r"^(\w+):\s*(?:#\s*(.*))?$")  # a section, with an optional comment
LINE = re.compile(r"^  (\w+):\s*(.*?)\s+#\s*(.*)$")


def main(path: Path = Path("params.yaml")) -> None:
    section = None
    for line in path.read_text().splitlines():
        heading = SECTION.match(line)
        if heading:
            section, note = heading.groups()
            note = f" ({note})" if note else ""
            print(f"\n**{section}**{note}\n\n| key | default | meaning |\n| --- | --- | --- |")
            continue
        match = LINE.match(line)
        if match and section:
            key, value, comment = match.groups()
            shown = yaml.safe_load(value)
            print(f"| `{section}.{key}` | `{shown}` | {comment.replace('|', '/')} |")


if __name__ == "__main__":
    main()
