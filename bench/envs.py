"""Interpreters for the systems: the main venv for flows and raw, a venv per peer.

Each peer gets its own virtualenv under ``.cache/bench-venvs/<system>`` (created with pip
on first use), since its pins (Quix Streams: confluent-kafka < 2.13) need not agree with
flows'. A stamp file records what was installed; delete the folder to reinstall.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENVS = REPO / ".cache" / "bench-venvs"

#: What each peer's venv gets from PyPI (newest versions).
PEER_PACKAGES: dict[str, list[str]] = {
    "quixstreams": ["quixstreams[postgresql]"],
    # lz4: the inputs are lz4-compressed, and aiokafka needs the codec installed
    "faust": ["faust-streaming", "aiokafka[lz4]"],
}
#: The distribution whose version the report shows, per system.
DISTRIBUTIONS = {"quixstreams": "quixstreams", "faust": "faust-streaming"}


class EnvError(RuntimeError):
    """A peer's virtualenv could not be created or installed; the message says why."""


def peer_python(system: str, log: Path) -> Path:
    """The interpreter of ``system``'s venv, created and installed when missing."""
    home = VENVS / system
    python = home / "bin" / "python"
    stamp = home / ".bench-installed"
    wanted = json.dumps(PEER_PACKAGES[system])
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(
        f"bench: creating the {system} virtualenv in {home} (pip install "
        f"{' '.join(PEER_PACKAGES[system])}) ...",
        flush=True,
    )
    try:
        if not python.exists():
            venv.EnvBuilder(with_pip=True, clear=True).create(home)
        with log.open("ab") as out:
            for args in (["--upgrade", "pip"], PEER_PACKAGES[system]):
                done = subprocess.run(
                    [str(python), "-m", "pip", "install", "-q", *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=900,
                    check=False,
                )
                if done.returncode != 0:
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                    raise EnvError(
                        f"pip install {' '.join(args)} failed in {home} "
                        f"(exit {done.returncode}):\n{tail}"
                    )
    except (OSError, subprocess.SubprocessError) as error:
        raise EnvError(f"cannot create the {system} virtualenv in {home}: {error}") from error
    stamp.write_text(wanted)
    return python


def version_of(python: Path, distribution: str) -> str:
    """``distribution``'s version as installed for ``python`` ('?' when it cannot tell)."""
    code = f"import importlib.metadata as m, sys; print(m.version({distribution!r}))"
    try:
        done = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return done.stdout.strip() or "?"


def ensure_main(package: str, module: str) -> bool:
    """Installs ``package`` into the running (main) venv when ``module`` is missing."""
    if importlib.util.find_spec(module) is not None:
        return True
    print(f"bench: installing {package} into {sys.prefix} ...", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", package],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        print(f"bench: could not install {package}: {done.stderr[-500:]}", file=sys.stderr)
        return False
    importlib.invalidate_caches()
    return importlib.util.find_spec(module) is not None
