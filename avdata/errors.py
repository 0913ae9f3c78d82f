"""One exception type for every bad input: it renders as a single line naming the file."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A media or protocol file that cannot be used. str() is one line: `PATH: reason`."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{self.path}: {self.reason}")

    def to_record(self) -> dict:
        return {"path": self.path, "reason": self.reason}
