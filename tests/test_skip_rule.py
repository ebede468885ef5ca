"""The suite's rule (tests/conftest.py): a skip fails, unless it is a documented platform condition."""

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_a_skip_fails_unless_it_is_a_platform_condition(tmp_path):
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_rule.py").write_text(
        "import pytest\n\n"
        "def test_missing_piece():\n    pytest.skip('golden data not found')\n\n"
        "@pytest.mark.skipif(True, reason='platform condition: a build without the feature')\n"
        "def test_platform():\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path), "-q", "-p", "no:cacheprovider"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 skipped" in result.stdout and "golden data not found" in result.stdout
