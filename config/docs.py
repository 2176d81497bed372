"""The configuration table of the README, made from the settings themselves.

    python -m config.docs              # print it
    python -m config.docs README.md    # rewrite it in place, between its markers

``tests/unit/test_settings.py`` checks that README.md holds exactly this table.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import SecretStr

from config.settings import Settings

SECRET_MARK = " (secret)"


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is None or value == []:
        return ""
    return f"`{value}`"


def settings_table() -> str:
    rows = ["| Variable | Default | What it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        secret = SECRET_MARK if "SecretStr" in repr(field.annotation) or field.annotation is SecretStr else ""
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | {_default(name)} | {description}{secret} |")
    return "\n".join(rows)


START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def rewrite(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{START}\n{settings_table()}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        rewrite(Path(sys.argv[1]))
    else:
        sys.stdout.write(settings_table() + "\n")
