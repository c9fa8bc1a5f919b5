"""results/queue.sh, the order of the long runs: finished runs are skipped, unfinished ones resumed, new ones
started with their config. The interpreter is a stand-in that logs its arguments: the runs themselves take hours."""
import subprocess

from conftest import ROOT


def test_the_queue_skips_finished_runs_resumes_unfinished_ones_and_starts_the_rest(tmp_path):
    runs = tmp_path / "runs"
    (runs / "improved").mkdir(parents=True)
    (runs / "improved" / "state.json").write_text('{"epochs_done": 4, "finished": false}')
    (runs / "fer2013.csv").write_text("emotion,pixels,Usage\n")
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\necho "$@" >> "$CALLS"\n')
    python.chmod(0o755)
    calls = tmp_path / "calls.txt"

    def queue():
        return subprocess.run(["bash", str(ROOT / "results" / "queue.sh")], capture_output=True, text=True,
                              timeout=60, env={"PATH": "/usr/bin:/bin", "RUNS": str(runs), "PYTHON": str(python),
                                               "CALLS": str(calls)})

    result = queue()
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == f"train.py --resume {runs}/improved"
    assert lines[1] == (f"train.py --config configs/improved-cycle2.yaml --init-weights {runs}/improved/best.keras "
                        f"--set data.path={runs}/fer2013.csv --set output.dir={runs} --set output.name=improved-cycle2")
    assert lines[2] == (f"train.py --config config.yaml --set data.path={runs}/fer2013.csv --set output.dir={runs} "
                        "--set output.name=seed-cpu")
    assert len(lines) == 3

    for name in ("improved", "improved-cycle2", "seed-cpu"):
        (runs / name).mkdir(exist_ok=True)
        (runs / name / "state.json").write_text('{"epochs_done": 40, "finished": true}')
    result = queue()
    assert result.returncode == 0, result.stderr
    for name in ("improved", "improved-cycle2", "seed-cpu"):
        assert f"{name} finished already" in result.stdout
    assert len(calls.read_text().splitlines()) == 3  # nothing run again
