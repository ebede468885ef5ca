"""bench/gpu.sh --dry-run: the prepared GPU check runs end to end on the CPU with tiny models and writes its report."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu.sh")


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_dry_run_writes_every_part_of_the_report(tmp_path):
    out = tmp_path / "gpu.md"
    result = run("--dry-run", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = out.read_text()
    assert "DRY RUN" in report
    for section in ("## Memory model against measured peaks", "## Text-to-video", "## Decode", "## Last 2 latent frames",
                    "## Attention of the last", "| PyTorch SDPA |"):
        assert section in report, section
    checks = [line for line in report.splitlines() if line.startswith(("| DiT,", "| VAE decode,"))]
    assert len(checks) == 4  # two DiT calls and two decodes compared with the memory model
    assert "Skipped" not in report


def test_dry_run_never_overwrites_the_published_report():
    result = run("--dry-run")
    assert result.returncode != 0 and "--dry-run needs --out" in result.stderr


def test_a_spent_budget_skips_the_remaining_parts(tmp_path):
    out = tmp_path / "gpu.md"
    assert run("--dry-run", "--out", str(out), "--budget-s", "0").returncode == 0
    assert out.read_text().count("## Skipped:") == 5
