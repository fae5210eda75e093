"""copa.io.read_yaml_mapping: the one reader of YAML configs (copa submit, copa verify, copa site, the validity
study's rebuild); every bad file is one line naming it and what is accepted, before anything runs."""

import pytest

from copa.errors import CopaError, InvalidSpecError
from copa.io import MAX_YAML_BYTES, read_yaml_mapping

EXPECTED = "a workflow config"


@pytest.mark.parametrize("content, error, message", [
    (b"models: [cnn2_c1\n", InvalidSpecError, "is not valid YAML: expected ',' or ']'"),
    (b"- cnn2_c1\n- cnn2_c2\n", InvalidSpecError, "does not hold a mapping (it holds list)"),
    (b"", InvalidSpecError, "does not hold a mapping (it holds NoneType)"),
    (b"title: \xff\xfe\n", InvalidSpecError, "is not valid YAML: 'utf-8' codec can't decode"),
    (b"a: 1\n" + b"#" * MAX_YAML_BYTES, InvalidSpecError, f"accepted is a workflow config of at most {MAX_YAML_BYTES}"),
])
def test_bad_files_are_one_line(tmp_path, content, error, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(error) as info:
        read_yaml_mapping(path, what="--config", expected=EXPECTED)
    text = str(info.value)
    assert text.startswith(f"--config {str(path)!r} ") and message in text and "\n" not in text
    assert text.endswith(EXPECTED) or f"{EXPECTED} of at most" in text


def test_missing_file_and_a_mapping(tmp_path):
    with pytest.raises(CopaError, match=r"'.*absent\.yaml' does not exist: expected a workflow config"):
        read_yaml_mapping(tmp_path / "absent.yaml", what="--config", expected=EXPECTED)
    (tmp_path / "ok.yaml").write_text("models: [cnn2_c1]\nseed: 0\n")
    assert read_yaml_mapping(tmp_path / "ok.yaml", expected=EXPECTED) == {"models": ["cnn2_c1"], "seed": 0}


def test_without_what_the_path_alone_names_the_file(tmp_path):
    (tmp_path / "config.yaml").write_text("[1, 2]\n")
    with pytest.raises(InvalidSpecError, match=rf"^{tmp_path}/config\.yaml does not hold a mapping"):
        read_yaml_mapping(tmp_path / "config.yaml", expected=EXPECTED)
