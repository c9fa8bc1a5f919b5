"""results/queue.sh, the order of the long runs: finished runs are skipped, unfinished ones resumed, new ones
started with their config. The interpreter is a stand-in that logs its arguments: the runs themselves take hours."""
import subprocess

from conftest import ROOT


def test_the_queue_skips_finished_runs_resumes_unfinished_ones_and_starts_the_rest(tmp_path):
    runs = tmp_path / "runs"
    (runs / "seed").mkdir(parents=True)
    (runs / "seed" / "state.json").write_text('{"epochs_done": 100, "finished": true}')
    (runs / "pilot-improved").mkdir()
    (runs / "pilot-improved" / "state.json").write_text('{"epochs_done": 4, "finished": false}')
    (runs / "fer2013.csv").write_text("emotion,pixels,Usage\n")
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\necho "$@" >> "$CALLS"\n')
    python.chmod(0o755)
    calls = tmp_path / "calls.txt"

    result = subprocess.run(["bash", str(ROOT / "results" / "queue.sh")], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "RUNS": str(runs), "PYTHON": str(python), "CALLS": str(calls)})

    assert result.returncode == 0, result.stderr
    assert "seed finished already" in result.stdout
    lines = calls.read_text().splitlines()
    assert lines[0] == f"train.py --resume {runs}/pilot-improved"
    assert [line.split("output.name=")[-1] for line in lines[1:]] == ["pilot-crop44", "pilot-narrow"]
    assert all(f"--set data.path={runs}/fer2013.csv" in line and "configs/improved.yaml" in line for line in lines[1:])
    assert "--set model.filters=[32,64,128,256]" in lines[2]
