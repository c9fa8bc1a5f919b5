"""The code's shape: no import cycle between our modules (imports inside functions count), no file over 400 lines
and no function over 50, and importing a module sets no environment variable (the scripts' entry points do)."""
import ast
import json
import subprocess
import sys

import pytest

from conftest import ROOT

MODULES = sorted(path.stem for path in ROOT.glob("*.py"))


def _imports(path):
    """The names of our own modules that `path` imports anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & set(MODULES) - {path.stem}


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(module, path):
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state:
                found = visit(other, path + [other])
                if found:
                    return found
        state[module] = "done"
        return None

    for module in MODULES:
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = {module: _imports(ROOT / f"{module}.py") for module in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    # The scan sees imports inside functions too.
    assert _cycle({**graph, "common": graph["common"] | {"train"}}) is not None


def test_no_file_over_400_lines_and_no_function_over_50():
    long_files = {module: n for module in MODULES if (n := len((ROOT / f"{module}.py").read_text().splitlines())) > 400}
    assert not long_files
    long_functions = [f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines" for module in MODULES
                      for node in ast.walk(ast.parse((ROOT / f"{module}.py").read_text()))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.end_lineno - node.lineno + 1 > 50]
    assert not long_functions


@pytest.mark.slow
def test_importing_a_module_sets_no_environment_variable():
    # Keras and the libraries are imported first: TensorFlow sets LD_LIBRARY_PATH at its import.
    probe = ("import json, os, sys, keras, cv2, sklearn, pandas, matplotlib; before = dict(os.environ); "
             "[__import__(m) for m in sys.argv[1:]]; "
             "print(json.dumps(sorted(k for k in os.environ if os.environ[k] != before.get(k))))")
    modules = MODULES
    env = {key: value for key, value in __import__("os").environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run([sys.executable, "-c", probe, *modules], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    # The scripts themselves set it, first thing.
    started = subprocess.run([sys.executable, "-c", "import common, os; common.start_backend(); "
                              "print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"], cwd=ROOT, capture_output=True, text=True,
                             env=env)
    assert started.stdout.strip() == "1"


@pytest.mark.parametrize("script", sorted(path.name for path in (ROOT / "gpu").glob("*.sh")))
def test_the_gpu_scripts_parse(script):
    """They run only on a lent GPU machine: bash at least reads each one whole."""
    result = subprocess.run(["bash", "-n", str(ROOT / "gpu" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
