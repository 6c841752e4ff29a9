"""The JVM systems: built with Maven by the bench itself, cached by a hash of their sources.

A JVM system is a Maven project under ``bench/systems/`` (``kafka_streams/``). Its build
goes to ``.cache/bench-jvm/<project>-<hash>/``, the hash covering the ``pom.xml`` and every
file under ``src/``, so an edit builds again and an unchanged project never does (as the
peers' venvs under ``.cache/bench-venvs/``). ``mvn compile dependency:copy-dependencies``
leaves ``classes/`` and ``lib/``: the system runs as ``java -cp classes:lib/* <main>``, the
JVM itself the child process the harness measures.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from bench.envs import REPO, EnvError

BUILDS = REPO / ".cache" / "bench-jvm"
KAFKA_STREAMS = REPO / "bench" / "systems" / "kafka_streams"
#: the main class of each JVM system
MAIN = {"kafka-streams": "dev.flows.bench.StreamsBench"}
PROJECTS = {"kafka-streams": KAFKA_STREAMS}
_STAMP = ".bench-built"


def sources(project: Path) -> list[Path]:
    """What a build is made of: ``pom.xml`` and every file under ``src/``, sorted."""
    found = [project / "pom.xml"]
    found += sorted(p for p in (project / "src").rglob("*") if p.is_file())
    return found


def source_hash(project: Path, files: Iterable[Path] | None = None) -> str:
    """A digest of ``files`` (default: :func:`sources`), their paths and contents.

    A renamed, added, removed or edited file changes it; the files' times do not.
    """
    digest = hashlib.sha256()
    for path in files if files is not None else sources(project):
        digest.update(str(path.relative_to(project)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_dir(project: Path) -> Path:
    return BUILDS / f"{project.name}-{source_hash(project)}"


def java() -> str:
    """The ``java`` to run: ``$JAVA_HOME/bin/java``, else the one on the ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise EnvError("the JVM systems need a JDK 17 or later: java is not on the PATH")
    return found


def build(system: str, log: Path) -> Path:
    """``system``'s build folder, built with Maven when its sources changed (or never were)."""
    project = PROJECTS[system]
    out = build_dir(project)
    if (out / _STAMP).exists():
        return out
    mvn = shutil.which("mvn")
    if mvn is None:
        raise EnvError(
            f"{system} is built with Maven, which is not on the PATH (apt-get install maven)"
        )
    print(f"bench: building {system} with Maven into {out} ...", flush=True)
    shutil.rmtree(out, ignore_errors=True)  # what a failed build left
    argv = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(project / "pom.xml"),
        f"-Dbench.target={out}",
        "compile",
        "dependency:copy-dependencies",
    ]
    try:
        with log.open("ab") as handle:
            handle.write(f"$ {' '.join(argv)}\n".encode())
            handle.flush()
            done = subprocess.run(
                argv, stdout=handle, stderr=subprocess.STDOUT, timeout=900, check=False
            )
    except (OSError, subprocess.SubprocessError) as error:
        raise EnvError(f"cannot build {system} with Maven: {error}") from error
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise EnvError(f"building {system} failed (mvn exit {done.returncode}):\n{tail}")
    (out / _STAMP).write_text(source_hash(project) + "\n")
    return out


def command(system: str, log: Path) -> list[str]:
    """The argv that runs ``system``'s JVM (built first when needed)."""
    out = build(system, log)
    classpath = os.pathsep.join([str(out / "classes"), str(out / "lib" / "*")])
    return [java(), "-cp", classpath, MAIN[system]]


def jar_version(lib: Path, artifact: str) -> str | None:
    """The version in ``<artifact>-<version>.jar`` under ``lib`` (None when absent)."""
    pattern = re.compile(re.escape(artifact) + r"-(\d[\w.\-]*)\.jar")
    for jar in sorted(lib.glob(f"{artifact}-*.jar")):
        matched = pattern.fullmatch(jar.name)
        if matched:
            return matched.group(1)
    return None


def java_version(text: str) -> str | None:
    """The version in ``java -version``'s first line (``openjdk version "17.0.15" ...``)."""
    matched = re.search(r'version "([^"]+)"', text)
    return matched.group(1) if matched else None


def versions() -> dict[str, str]:
    """Kafka Streams' and Java's versions, for the report (empty before the first build)."""
    found: dict[str, str] = {}
    version = jar_version(build_dir(KAFKA_STREAMS) / "lib", "kafka-streams")
    if version is None:
        return found
    found["Kafka Streams"] = version
    try:
        done = subprocess.run(
            [java(), "-version"], capture_output=True, text=True, timeout=60, check=False
        )
        found["Java (Kafka Streams)"] = java_version(done.stderr) or "?"
    except (OSError, subprocess.SubprocessError, EnvError):
        found["Java (Kafka Streams)"] = "?"
    return found
