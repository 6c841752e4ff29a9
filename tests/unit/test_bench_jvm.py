"""The JVM systems' build cache key and the versions the report shows."""

from __future__ import annotations

import os
from pathlib import Path

from bench.jvm import KAFKA_STREAMS, jar_version, java_version, source_hash, sources


def _project(root: Path) -> Path:
    (root / "src" / "main" / "java").mkdir(parents=True)
    (root / "pom.xml").write_text("<project/>")
    (root / "src" / "main" / "java" / "App.java").write_text("class App {}")
    return root


def test_the_hash_follows_contents_and_names_not_times(tmp_path: Path) -> None:
    project = _project(tmp_path)
    first = source_hash(project)
    os.utime(project / "pom.xml", (1, 1))
    assert source_hash(project) == first
    (project / "src" / "main" / "java" / "App.java").write_text("class App { }")
    edited = source_hash(project)
    assert edited != first
    (project / "src" / "main" / "java" / "App.java").rename(project / "src" / "main" / "B.java")
    assert source_hash(project) not in (first, edited)


def test_a_new_source_file_changes_the_hash(tmp_path: Path) -> None:
    project = _project(tmp_path)
    before = source_hash(project)
    (project / "src" / "main" / "resources").mkdir()
    (project / "src" / "main" / "resources" / "log.properties").write_text("x=1")
    assert source_hash(project) != before


def test_the_kafka_streams_build_covers_its_pom_and_sources() -> None:
    names = {p.relative_to(KAFKA_STREAMS).as_posix() for p in sources(KAFKA_STREAMS)}
    assert "pom.xml" in names
    assert any(n.endswith("StreamsBench.java") for n in names)
    assert not any(n.startswith("target/") for n in names)


def test_versions_from_jar_names_and_java_version(tmp_path: Path) -> None:
    for jar in ("kafka-streams-4.1.1.jar", "kafka-clients-4.1.1.jar", "rocksdbjni-9.7.3.jar"):
        (tmp_path / jar).write_bytes(b"")
    assert jar_version(tmp_path, "kafka-streams") == "4.1.1"
    assert jar_version(tmp_path, "kafka") is None
    assert java_version('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime') == "17.0.15"
    assert java_version("no java here") is None
