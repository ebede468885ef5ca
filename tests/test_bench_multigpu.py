"""bench/multigpu.sh --dry-run: every layout launches under torchrun (gloo, tiny models) and reports one row, and
the communication model prints its table from the real configs."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_reports_every_layout_that_fits(tmp_path):
    out = tmp_path / "multigpu.md"
    result = subprocess.run(["bash", os.path.join(ROOT, "bench", "multigpu.sh"), "--dry-run", "--out", str(out)],
                            cwd=ROOT, env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split(" | ")[:3] for line in out.read_text().splitlines() if line.startswith("| miniflux") or
            line.startswith("| sd3")]
    assert rows == [["| miniflux", "one process", "1"], ["| miniflux", "CFG 2", "2"], ["| miniflux", "SP 2", "2"],
                    ["| miniflux", "SP 2 x CFG 2", "4"], ["| miniflux", "SP 3", "3"], ["| sd3", "one process", "1"],
                    ["| sd3", "CFG 2", "2"], ["| sd3", "SP 2", "2"], ["| sd3", "SP 2 x CFG 2", "4"],
                    ["| sd3", "SP 3", "3"], ["| sd3", "SP 4", "4"]]
    assert "DRY RUN" in out.read_text()


def test_the_dry_run_never_overwrites_the_published_report():
    result = subprocess.run(["bash", os.path.join(ROOT, "bench", "multigpu.sh"), "--dry-run"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--dry-run needs --out PATH" in result.stderr


def test_the_communication_model_covers_both_variants_sizes_and_layouts():
    result = subprocess.run([sys.executable, "-m", "bench.comm_model", "--bandwidth-gbs", "25"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| miniflux", "| sd3"))]
    assert len(rows) == 2 * 2 * 6
    cfg = [row for row in rows if "| CFG 2 |" in row]
    assert all(row.endswith("| 2.00x |") for row in cfg)  # one tiny exchange per step: the whole 2x
    sp8 = [float(row.split("|")[-2].strip().rstrip("x")) for row in rows if "| SP 8 |" in row]
    assert all(1 < speedup < 8 for speedup in sp8)  # traffic costs something at 25 GB/s
