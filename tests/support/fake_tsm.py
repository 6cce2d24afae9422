# SPDX-License-Identifier: Apache-2.0
"""A fake configfs-tsm "kernel" in a temporary directory, for the client TDX attester.

Real configfs populates a report entry's attribute files on ``mkdir`` and produces
``outblob`` synchronously when ``inblob`` is written. Here ``mkdir`` writes ``provider``
and ``generation`` and makes ``inblob``/``outblob`` named pipes served by a thread: it
reads REPORT_DATA from ``inblob``, bumps ``generation``, and writes the quote made by
``make_quote(report_data)`` to ``outblob``. Install it with :meth:`install` (it replaces
the attester's entry create/remove hooks).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kbs.client import tdx_attester


class FakeTsm:
    def __init__(
        self,
        root: Path,
        make_quote: Callable[[bytes], bytes],
        *,
        provider: str = "tdx_guest",
        extra_generations: int = 0,
    ) -> None:
        self.root = root
        self.make_quote = make_quote
        self.provider = provider
        self.extra_generations = extra_generations
        self.report_data: list[bytes] = []
        self.threads: list[threading.Thread] = []
        root.mkdir(parents=True, exist_ok=True)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeTsm:
        monkeypatch.setattr(tdx_attester, "_new_report_dir", self.mkdir)
        monkeypatch.setattr(tdx_attester, "_remove_report_dir", self.rmdir)
        return self

    def mkdir(self, root: Path) -> Path:
        entry = root / f"entry{len(self.threads)}"
        entry.mkdir()
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "generation").write_text("0\n")
        os.mkfifo(entry / "inblob")
        os.mkfifo(entry / "outblob")
        if self.provider == "tdx_guest":
            thread = threading.Thread(target=self._serve, args=(entry,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return entry

    def _serve(self, entry: Path) -> None:
        with (entry / "inblob").open("rb") as inblob:
            data = inblob.read()
        self.report_data.append(data)
        (entry / "generation").write_text(f"{1 + self.extra_generations}\n")
        with (entry / "outblob").open("wb") as outblob:
            outblob.write(self.make_quote(data))

    def rmdir(self, entry: Path) -> None:
        shutil.rmtree(entry)
