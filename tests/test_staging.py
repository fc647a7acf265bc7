"""core.staging: a folder of outputs appears whole or not at all, and a failed write keeps the old one."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.staging import staged_dir


def test_a_clean_exit_replaces_the_folder_and_leaves_no_hidden_siblings(tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_dir(out) as staging:
        (staging / "new.txt").write_text("new")
        assert not (out / "new.txt").exists(), "nothing shows before the swap"
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_a_failure_midway_keeps_the_previous_folder_untouched(tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_dir(out) as staging:
        (staging / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert (out / "old.txt").read_text() == "old" and not (out / "half.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    fresh = tmp_path / "new" / "deep"
    with pytest.raises(ValueError), staged_dir(fresh):
        raise ValueError
    assert not fresh.exists()
