"""The pure core never imports a Kafka, database, metrics or injection library.

Each check runs in a fresh interpreter with those modules blocked *before* anything is
imported, so a stray import anywhere under ``flows`` (even a lazy one at module level of a
submodule) fails the test with the module's name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCKED = ("confluent_kafka", "sqlalchemy", "psycopg", "prometheus_client", "dependency_injector")

_PRELUDE = textwrap.dedent(
    """
    import importlib
    import pkgutil
    import sys

    BLOCKED = {blocked!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"the pure core imported {{name}}")
            return None

    sys.meta_path.insert(0, Blocker())
    """
).format(blocked=frozenset(BLOCKED))


def _run(body: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", _PRELUDE + textwrap.dedent(body)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_blocker_blocks() -> None:
    # Without this, a blocker that never fires would make the real test pass vacuously.
    result = _run(
        """
        for name in BLOCKED:
            try:
                importlib.import_module(name)
            except ImportError:
                continue
            raise SystemExit(f"{name} was not blocked")
        """
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_flows_imports_without_drivers() -> None:
    result = _run(
        """
        import flows
        import flows.compiler
        import flows.testing

        for module in pkgutil.walk_packages(flows.__path__, "flows."):
            importlib.import_module(module.name)

        leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.strip() == "ok"


def test_the_test_driver_runs_without_drivers() -> None:
    # Running flows (not only importing them) must not reach for a driver either.
    result = _run(
        """
        from flows import STR, App, Map, Topic
        from flows.testing import TestDriver

        source = Topic("in", value_format=STR)
        sink = Topic("out", value_format=STR)
        app = App("pure", [Map(name="up", source=source, sink=sink,
                               fn=lambda r: r.value.upper())])
        driver = TestDriver(app)
        driver.pipe("in", "hello")
        assert [r.value for r in driver.read("out")] == ["HELLO"]
        leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.strip() == "ok"


def test_apps_that_encrypt_nothing_never_load_cryptography() -> None:
    # The state cipher imports cryptography when it is built (~40 ms), not flows itself.
    result = _run(
        """
        import flows
        import flows.encryption
        from flows import STR, App, StatefulMap, Topic
        from flows.testing import TestDriver

        source = Topic("in", key_format=STR, value_format=STR)
        sink = Topic("out", value_format=STR)
        app = App("plain", [StatefulMap(name="n", source=source, sink=sink,
                                        fn=lambda r, s: (None, 1))])
        TestDriver(app).pipe("in", "x", key="k")
        assert "cryptography" not in sys.modules
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.strip() == "ok"
