"""Java classpaths resolved from Maven Central by poms kept in the repository.

Each ``poms/<name>.xml`` lists the artifacts one user needs (``kafka-broker``:
the local broker; ``flink-kafka-connector``: the Flink job; ``spark-kafka``: the
Spark scorer's Kafka source). :func:`resolve` copies them into
``<cache_dir>/jars/<name>/`` once and stamps the directory with the pom's hash,
so a second call is instant and a changed pom re-resolves. :func:`build_java`
compiles the Flink job's Java helpers there the same way.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from pathlib import Path

from core.services.runner import ServiceError

log = logging.getLogger(__name__)

POMS_DIR = Path(__file__).resolve().parent / "poms"


def require_java() -> str:
    """Path of ``java``, or a ServiceError that says how to get it."""
    java = shutil.which("java")
    if java is None:
        raise ServiceError(
            "Java 17+ is required for the local Kafka broker but `java` is not on PATH. "
            "Install it (`apt-get install openjdk-17-jdk-headless`, or run `make setup`), "
            "or use an existing broker with `kafka=remote` / `kafka.local_broker.enabled=false`."
        )
    return java


def resolve(name: str, cache_dir: Path) -> Path:
    """Resolve ``poms/<name>.xml`` into a directory of jars and return it."""
    pom = POMS_DIR / f"{name}.xml"
    if not pom.is_file():
        raise ServiceError(f"no pom for {name!r} at {pom}")
    target = Path(cache_dir).resolve() / "jars" / name  # absolute: mvn runs from the pom's folder
    stamp = target / ".pom-sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest and any(target.glob("*.jar")):
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(
            f"Maven is needed once to fetch the {name} jars, but `mvn` is not on PATH; "
            "install it (`apt-get install maven`, or run `make setup`)"
        )
    log.info("resolving %s jars from Maven Central into %s", name, target)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServiceError(f"mvn could not resolve {pom.name}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    # Swap in whole so an interrupted download never leaves a half classpath.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    stamp.write_text(digest + "\n")
    return target


def default_cache_dir() -> Path:
    """The cache directory of the default configuration (used by `make setup`)."""
    from core.config import load_config

    return Path(load_config().paths.cache_dir)


def build_java(name: str, sources: Path, classpath: list[Path], cache_dir: Path) -> Path:
    """Compile the ``.java`` files under ``sources`` into ``<cache_dir>/jars/<name>/<name>.jar``.

    Rebuilt only when a source changes (stamped with their hash). Used for the
    few Java classes PyFlink has no Python API for.
    """
    files = sorted(Path(sources).rglob("*.java"))
    if not files:
        raise ServiceError(f"no Java sources under {sources}")
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    target = Path(cache_dir).resolve() / "jars" / name
    jar = target / f"{name}.jar"
    stamp = target / ".src-sha256"
    if jar.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return jar
    javac, jar_tool = shutil.which("javac"), shutil.which("jar")
    if javac is None or jar_tool is None:
        raise ServiceError("a JDK (javac, jar) is needed to build the Flink job's Java helpers; "
                           "install openjdk-17-jdk-headless (or run `make setup`)")
    shutil.rmtree(target, ignore_errors=True)
    classes = target / "classes"
    classes.mkdir(parents=True)
    cp = ":".join(str(p) for p in classpath)
    proc = subprocess.run([javac, "--release", "11", "-nowarn", "-cp", cp, "-d", str(classes), *map(str, files)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServiceError(f"javac failed for {name}:\n{proc.stderr[-3000:]}")
    proc = subprocess.run([jar_tool, "cf", str(jar), "-C", str(classes), "."], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServiceError(f"jar failed for {name}:\n{proc.stderr[-2000:]}")
    stamp.write_text(digest + "\n")
    return jar
