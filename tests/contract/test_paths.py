from pathlib import Path

from flan_t5_detox.contract.paths import CONTAINER, ML_ROOT, MlPaths


def test_container_and_local_paths_map_both_ways(tmp_path):
    paths = MlPaths(tmp_path)
    assert paths.container_path(paths.channel("dataset")) == "/opt/ml/input/data/dataset"
    assert paths.local_path("/opt/ml/checkpoints") == paths.checkpoints
    assert paths.local_path("/elsewhere/x") == Path("/elsewhere/x")  # not under /opt/ml: as given


def test_the_container_paths_are_where_sagemaker_puts_them():
    assert CONTAINER.root == ML_ROOT == Path("/opt/ml")
    training = {
        CONTAINER.hyperparameters: "/opt/ml/input/config/hyperparameters.json",
        CONTAINER.input_data_config: "/opt/ml/input/config/inputdataconfig.json",
        CONTAINER.resource_config: "/opt/ml/input/config/resourceconfig.json",
        CONTAINER.checkpoint_config: "/opt/ml/input/config/checkpointconfig.json",
        CONTAINER.channel("dataset"): "/opt/ml/input/data/dataset",
        CONTAINER.model_dir: "/opt/ml/model",
        CONTAINER.output_data_dir: "/opt/ml/output/data",
        CONTAINER.checkpoints: "/opt/ml/checkpoints",
        CONTAINER.failure: "/opt/ml/output/failure",
    }
    processing = {
        CONTAINER.processing_job_config: "/opt/ml/config/processingjobconfig.json",
        CONTAINER.processing_resource_config: "/opt/ml/config/resourceconfig.json",
        CONTAINER.processing_input("parts"): "/opt/ml/processing/input/parts",
        CONTAINER.processing_output("report"): "/opt/ml/processing/output/report",
        CONTAINER.message: "/opt/ml/output/message",
    }
    for path, expected in [*training.items(), *processing.items()]:
        assert str(path) == expected


def test_any_folder_stands_in_for_opt_ml(tmp_path):
    paths = MlPaths(str(tmp_path))  # a string root is made a Path
    assert paths.root == tmp_path
    assert paths.message == tmp_path / "output" / "message"
    assert paths.failure == tmp_path / "output" / "failure"
    assert paths.local_path(paths.container_path(paths.processing_input("x"))) == paths.processing_input("x")
