"""What a run of ours left running."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def live_processes_under(home: Path) -> list[str]:
    """Command lines of live (not zombie) processes that mention ``home``: what a run of ours left."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z" and str(home) in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def kill_processes_under(home: Path) -> list[str]:
    """SIGKILL every live process that mentions ``home`` (a failed test's leftovers); what was killed."""
    killed = live_processes_under(home)
    for line in killed:
        try:
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
        except ProcessLookupError:
            continue
    return killed
