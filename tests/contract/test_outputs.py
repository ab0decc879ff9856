import pytest

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.outputs import check_writable, publish


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


def test_a_publish_that_fails_drops_the_staging_and_names_the_target(tmp_path):
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / "a.txt").write_text("a")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the target folder should be")
    with pytest.raises(JobInputError, match=f"cannot write the results to {blocked}"):
        publish(staging, blocked)
    assert not staging.exists()
