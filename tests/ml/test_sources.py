import hashlib
import json

from flan_t5_detox.contract.paths import ADAPTER_INFO
from flan_t5_detox.ml.sources import describe_source


def test_a_folder_is_fingerprinted_file_by_file_and_a_hub_name_is_kept_as_is(tmp_path):
    (tmp_path / "adapter_model.bin").write_bytes(b"weights")
    (tmp_path / ADAPTER_INFO).write_text(json.dumps({"ppo_steps": 3}))
    (tmp_path / "README.md").write_text("not a model file")
    source = describe_source(tmp_path, origin="s3://bucket/model.tar.gz")
    assert source.location == "s3://bucket/model.tar.gz" and source.info == {"ppo_steps": 3}
    assert sorted(source.sha256) == ["adapter_info.json", "adapter_model.bin"]
    assert source.sha256["adapter_model.bin"] == hashlib.sha256(b"weights").hexdigest()
    assert describe_source(tmp_path).location == str(tmp_path)
    hub = describe_source("google/flan-t5-base")
    assert hub.location == "google/flan-t5-base" and hub.sha256 == {} and hub.info is None
