"""``flows new``: the scaffold's test passes and the app is registered, at once."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from flows import load_app, registered_apps
from flows.errors import ConfigError
from runtimes.cli import main


def test_a_new_app_is_registered_and_its_test_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    assert main(["new", "shop", "--dir", str(tmp_path)], out) == 0
    assert "pytest" in out.getvalue() and "flows run shop" in out.getvalue()
    assert sorted(p.name for p in (tmp_path / "shop").iterdir()) == ["app.py", "test_app.py"]
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "shop")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout
    monkeypatch.chdir(tmp_path)  # the registry is the working directory's flows.toml
    assert registered_apps()["shop"] == str(tmp_path / "shop" / "app.py")
    app = load_app("shop")
    assert app.name == "shop" and app.flow_names == ("count",)
    described = io.StringIO()
    assert main(["describe", "shop"], described) == 0
    assert "shop-input" in described.getvalue()


def test_a_second_app_joins_the_registry_and_nothing_is_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flows.toml").write_text('# mine\n[apps]\nold = "old.py"\n')
    assert main(["new", "cart", "--dir", str(tmp_path)], io.StringIO()) == 0
    monkeypatch.chdir(tmp_path)
    apps = registered_apps()
    assert apps["cart"].endswith("cart/app.py") and apps["old"].endswith("old.py")
    assert (tmp_path / "flows.toml").read_text().startswith("# mine\n")
    assert main(["new", "cart", "--dir", str(tmp_path)], io.StringIO()) == 2  # exists
    assert main(["new", "Bad-Name", "--dir", str(tmp_path)], io.StringIO()) == 2


def test_a_malformed_registry_is_named(tmp_path: Path) -> None:
    from flows.app import local_apps

    assert local_apps(tmp_path / "flows.toml") == {}  # none: nothing registered
    (tmp_path / "flows.toml").write_text("[apps\n")
    with pytest.raises(ConfigError, match="not a valid TOML"):
        local_apps(tmp_path / "flows.toml")
    (tmp_path / "flows.toml").write_text("[apps]\nshop = 3\n")
    with pytest.raises(ConfigError, match="must map names to strings"):
        local_apps(tmp_path / "flows.toml")
