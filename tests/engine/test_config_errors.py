"""A config error names the YAML file (or the command line) and the key."""

import pytest
from conftest import CONFIGS

from midog_d2.engine import setup_cfg


def test_an_unknown_key_in_a_yaml_names_the_file_and_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f'_BASE_: "{CONFIGS / "Base-MultiTask-RetinaNet.yaml"}"\nTEST:\n  TILE:\n    SIZ: 512\n'
    )
    with pytest.raises(ValueError, match=r"bad\.yaml: Non-existent config key: TEST\.TILE\.SIZ"):
        setup_cfg(str(bad))


def test_a_wrong_type_in_a_yaml_names_the_file(tmp_path):
    bad = tmp_path / "typed.yaml"
    bad.write_text(
        f'_BASE_: "{CONFIGS / "Base-MultiTask-RetinaNet.yaml"}"\nTEST:\n  TILE:\n    SIZE: "big"\n'
    )
    with pytest.raises(ValueError, match=r"typed\.yaml: .*SIZE"):
        setup_cfg(str(bad))


def test_a_bad_override_says_it_came_from_the_command_line():
    with pytest.raises(ValueError, match="command-line config override: .*TEST.TILE.SIZ"):
        setup_cfg(str(CONFIGS / "Base-MultiTask-RetinaNet.yaml"), ["TEST.TILE.SIZ", "3"])
    with pytest.raises(ValueError, match="command-line config override"):
        setup_cfg(str(CONFIGS / "Base-MultiTask-RetinaNet.yaml"), ["TEST.TILE.SIZE"])
