"""``flows.__all__`` is the curated public API: sorted, complete and importable.

Modelled on httpx's ``tests/test_exported_members.py``. The order is the one ruff's
RUF022 keeps (isort style, case-sensitive): SCREAMING_CASE constants, then CamelCase
classes, then everything else, each group in plain string order.
"""

from __future__ import annotations

import flows


def _isort_style(name: str) -> tuple[int, str]:
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    return group, name


def test_all_is_sorted() -> None:
    assert flows.__all__ == sorted(flows.__all__, key=_isort_style)


def test_all_has_no_duplicates() -> None:
    assert len(flows.__all__) == len(set(flows.__all__))


def test_every_exported_name_exists() -> None:
    missing = [name for name in flows.__all__ if not hasattr(flows, name)]
    assert missing == []


def test_every_public_name_is_exported() -> None:
    included_private_members = {"__version__"}
    public = {
        name
        for name, value in vars(flows).items()
        if (not name.startswith("_") or name in included_private_members)
        # submodules become attributes of the package once imported; they are not API
        and type(value).__name__ != "module"
    }
    assert set(flows.__all__) == public


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from flows import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(flows.__all__)
