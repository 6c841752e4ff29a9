"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _block_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


def test_the_test_driver_example_runs() -> None:
    exec(compile(_block_after("## Testing your flow without a broker"), "README", "exec"), {})


def test_the_app_example_compiles_and_counts() -> None:
    namespace: dict[str, object] = {}
    exec(compile(_block_after("## What you write"), "README", "exec"), namespace)
    from flows.testing import TestDriver

    driver = TestDriver(namespace["app"])  # type: ignore[arg-type]
    driver.pipe("word-count-input", "b a b")
    assert driver.rows("store") == [{"word": "a", "count": 1}, {"word": "b", "count": 2}]


def test_the_two_setup_commands_come_first() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first_block
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


def test_the_schema_registry_example_runs_in_the_driver() -> None:
    namespace: dict[str, object] = {}
    exec(compile(_block_after("### Schema Registry formats"), "README", "exec"), namespace)
    from flows.testing import TestDriver

    driver = TestDriver(namespace["app"])  # type: ignore[arg-type]
    driver.pipe("orders", {"customer": "ada", "amount": 10.0}, key="ada")
    assert [r.value for r in driver.read("taxed")] == [{"customer": "ada", "amount": 12.0}]
    assert driver.registry is not None
    assert sorted(driver.registry.client.get_subjects()) == ["orders-value", "shop.Order"]  # type: ignore[attr-defined]
