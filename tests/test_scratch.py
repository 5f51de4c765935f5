"""Kept scratch directories (hetcc/scratch.py): marked when kept, pruned to a bound, and nothing
unmarked or recent is ever removed."""
import os
import time

from hetcc.scratch import MARK, keep_scratch, prune


def _kept(root, name, age_s, marked=True):
    path = root / f"hetcc-{name}"
    (path / "seg0").mkdir(parents=True)
    (path / "seg0" / "failed_segment.pt2").write_bytes(b"x")
    if marked:
        (path / MARK).write_text("kept")
        when = time.time() - age_s
        os.utime(path / MARK, (when, when))
    return path


def test_keeping_one_prunes_the_oldest_kept_beyond_the_bound(tmp_path):
    old = [_kept(tmp_path, f"old{i:02d}", age_s=3 * 86400 + i * 60) for i in range(12)]  # old00 newest
    recent = [_kept(tmp_path, f"new{i}", age_s=60) for i in range(3)]
    running = _kept(tmp_path, "running", age_s=0, marked=False)  # another process's live compile
    os.utime(running, (0, 0))  # however old it looks
    stranger = tmp_path / "hetcc-symlink"
    stranger.symlink_to(old[-1], target_is_directory=True)
    fresh = _kept(tmp_path, "fresh", age_s=0, marked=False)

    removed = keep_scratch(fresh, keep=10)
    assert (fresh / MARK).is_file()
    # 17 kept now: the 10 newest stay (fresh, 3 recent, old00..old05); of the rest all are a day old
    assert sorted(removed) == sorted(old[6:])
    for path in [fresh, running, *recent, *old[:6]]:
        assert path.is_dir(), path
    for path in old[6:]:
        assert not path.exists(), path
    assert stranger.is_symlink()  # a link is never followed or removed


def test_recent_kept_directories_survive_any_count(tmp_path):
    kept = [_kept(tmp_path, f"k{i:02d}", age_s=3600) for i in range(15)]
    assert prune(tmp_path, keep=2, min_age=86400) == []
    assert all(path.is_dir() for path in kept)
    assert len(prune(tmp_path, keep=2, min_age=60)) == 13


def test_nothing_to_keep_without_a_scratch_directory(tmp_path):
    assert keep_scratch(None) == []
    assert keep_scratch(tmp_path / "hetcc-gone") == []  # cannot mark: still no error
