"""Publishing results: whole or not at all, staged beside the target or inside it."""

import pytest

from flan_t5_detox.contract import outputs
from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.outputs import check_writable, publish


def _staged(folder, files: dict[str, str]):
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_staged_inside_the_target_every_file_arrives_the_last_one_last(tmp_path, monkeypatch):
    target = tmp_path / "report"
    _staged(target, {"report.json": "old", "old.png": "earlier run", "notes.txt": "the user's"})
    staging = _staged(target / ".staging", {"report.json": "new", "z.csv": "z", "a.png": "a"})
    moved = []
    move = outputs.shutil.move
    monkeypatch.setattr(outputs.shutil, "move", lambda src, dst: (moved.append(dst.name), move(src, dst)))

    publish(staging, target, last="report.json", stale=("old.png", "a.png"))
    assert moved == ["a.png", "z.csv", "report.json"]  # by name, but `last` last
    assert {p.name: p.read_text() for p in target.iterdir()} == {
        "report.json": "new",
        "a.png": "a",
        "z.csv": "z",
        "notes.txt": "the user's",  # not named stale: not ours to remove
    }


def test_staged_beside_the_target_folders_and_links_are_replaced_not_followed(tmp_path):
    target, elsewhere = tmp_path / "model", tmp_path / "elsewhere"
    _staged(elsewhere, {"keep.txt": "not the job's"})
    _staged(target / "steps" / "1", {"old.bin": "old"})
    (target / "link").symlink_to(elsewhere)
    staging = _staged(tmp_path / ".staging", {"link": "a file now"})
    _staged(staging / "steps" / "2", {"new.bin": "new"})

    publish(staging, target)
    assert not staging.exists()
    assert [p.name for p in (target / "steps").iterdir()] == ["2"]
    assert not (target / "link").is_symlink() and (target / "link").read_text() == "a file now"
    assert (elsewhere / "keep.txt").read_text() == "not the job's"


def test_a_failed_publish_removes_its_staging_and_names_the_target(tmp_path):
    target = tmp_path / "report"
    target.write_text("a file where the folder should be")
    staging = _staged(tmp_path / ".staging", {"report.json": "{}"})
    with pytest.raises(JobInputError, match=f"cannot write the results to {target}"):
        publish(staging, target)
    assert not staging.exists()


def test_an_unwritable_place_fails_the_check(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with pytest.raises(JobInputError, match="the report folder .* cannot be written"):
        check_writable(blocker / "report", "the report folder")
    check_writable(tmp_path / "fine" / "report", "the report folder")
    assert (tmp_path / "fine" / "report").is_dir()


def test_a_writable_folder_is_made_and_no_probe_is_left(tmp_path):
    folder = tmp_path / "out" / "model"
    check_writable(folder, "the model folder")
    assert folder.is_dir() and not list(folder.iterdir()) and list(folder.parent.iterdir()) == [folder]


def test_a_folder_that_cannot_be_made_is_named_before_any_work(tmp_path):
    (tmp_path / "model").write_text("a file where the folder should be")
    with pytest.raises(JobInputError, match=r"the model folder .*model cannot be written .*writable folder"):
        check_writable(tmp_path / "model", "the model folder")


@pytest.mark.parametrize("inside", [False, True])
def test_publish_moves_every_entry_replacing_same_named_ones(tmp_path, inside):
    target = tmp_path / "report"
    (target / "plots").mkdir(parents=True)
    (target / "plots" / "old.png").write_text("old")
    (target / "kept.txt").write_text("kept")
    (target / "report.html").write_text("old")
    staging = (target if inside else tmp_path) / ".staging"
    (staging / "plots").mkdir(parents=True)
    (staging / "plots" / "new.png").write_text("new")
    (staging / "report.html").write_text("new")
    publish(staging, target)
    assert not staging.exists()
    assert sorted(p.name for p in target.iterdir()) == ["kept.txt", "plots", "report.html"]
    assert [p.name for p in (target / "plots").iterdir()] == ["new.png"]  # a folder is replaced whole
    assert (target / "report.html").read_text() == "new"
