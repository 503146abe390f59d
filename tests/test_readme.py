"""The README's examples run as written (in a temporary folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_using_it_examples_run(tmp_path, monkeypatch):
    blocks = _python_blocks()
    assert len(blocks) >= 2 and "find_transforms" in blocks[0] and "find_shifts" in blocks[1]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks[:2]:  # the second continues the first (imports, names)
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert (tmp_path / "night.fits").exists() and (tmp_path / "night2.zarr").exists()
    result = namespace["result"]
    assert result.attrs["complete"] is True


@pytest.mark.parametrize("name", ["find_transforms", "open_stack", "frame_quality", "Rejection"])
def test_public_names_in_the_readme_exist(name):
    import bigstack

    assert name in README.read_text() and hasattr(bigstack, name)
