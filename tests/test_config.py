import pytest

from common import UserError
from config import DEFAULTS, flatten, load_config, monitor_mode, monitor_name
from conftest import ROOT, assert_user_error, run_script


def test_config_yaml_spells_out_every_default_with_a_comment():
    assert load_config(ROOT / "config.yaml") == DEFAULTS
    lines = [line for line in (ROOT / "config.yaml").read_text().splitlines() if line.strip()]
    keys = [line for line in lines if not line.lstrip().startswith("#") and line.split("#")[0].rstrip().endswith(":") is False]
    assert len(keys) == len(flatten(DEFAULTS))
    for line in keys:
        assert "#" in line, f"no comment on: {line}"


def test_the_notebooks_values():
    config = load_config(ROOT / "config.yaml")
    assert config["train"] == {"epochs": 100, "batch_size": 64, "learning_rate": 0.001, "optimizer": "adam",
                               "weight_decay": None,
                               "schedule": "plateau", "warmup_epochs": 0, "label_smoothing": 0.0, "mixup": 0.0,
                               "cutmix": 0.0, "ema": 0.0,
                               "augment": {"flip": False, "shift": 0.0, "rotation": 0.0, "zoom": 0.0, "crop": 0,
                                           "erase": 0.0}, "distill": {"teachers": [], "weight": 0.5},
                               "shuffle": True, "seed": None, "precision": "auto", "jit_compile": "auto",
                               "feed": "auto", "steps_per_execution": 1, "scan_steps": 1, "validation_batch_size": None,
                               "distribute": "auto", "cluster_timeout": 300}
    assert config["data"]["protocol"] == "notebook" and config["data"]["validation_split"] == 0.2
    assert config["model"]["l2"] == 0.01 and config["model"]["dropout"] == 0.5
    assert config["callbacks"]["reduce_lr"] == {"monitor": "val_loss", "factor": 0.9, "patience": 3}
    assert config["callbacks"]["early_stopping"] == {"enabled": False, "monitor": "val_acc", "min_delta": 0.0,
                                                     "patience": 6}
    assert config["callbacks"]["checkpoint"] == {"monitor": "val_loss", "save_best_only": True}


def test_notebook_as_written_turns_early_stopping_on_and_changes_nothing_else():
    as_written = load_config(ROOT / "configs" / "notebook-as-written.yaml")
    assert as_written["callbacks"]["early_stopping"]["enabled"] is True
    as_written["callbacks"]["early_stopping"]["enabled"] = False
    assert as_written == DEFAULTS


def test_overrides_are_typed_like_yaml():
    config = load_config(ROOT / "config.yaml", ["train.epochs=5", "train.learning_rate=1e-4", "train.seed=3",
                                                "data.path=/tmp/x.csv", "model.dense=[32, 16]",
                                                "callbacks.early_stopping.enabled=true", "output.name=abc"])
    assert config["train"]["epochs"] == 5 and config["train"]["learning_rate"] == 1e-4
    assert config["train"]["seed"] == 3 and config["data"]["path"] == "/tmp/x.csv"
    assert config["model"]["dense"] == [32, 16] and config["callbacks"]["early_stopping"]["enabled"] is True
    assert config["output"]["name"] == "abc"
    # A text key takes the text, which YAML alone would read as a number or a boolean.
    config = load_config(ROOT / "config.yaml", ["output.name=2024", "data.path=no", "train.optimizer=sgd"])
    assert (config["output"]["name"], config["data"]["path"], config["train"]["optimizer"]) == ("2024", "no", "sgd")
    # A whole number for a number-typed key is a float, as Keras's optimizers want their learning rate.
    config = load_config(ROOT / "config.yaml", ["train.learning_rate=1", "model.dropout=0"])
    assert type(config["train"]["learning_rate"]) is float and type(config["model"]["dropout"]) is float


def test_monitor_spellings():
    assert monitor_name("val_acc") == "val_accuracy" and monitor_name("acc") == "accuracy"
    assert monitor_name("val_loss") == "val_loss"
    assert monitor_mode("val_acc") == "max" and monitor_mode("loss") == "min"


BAD_CONFIGS = {
    "unknown section": ("trian:\n  epochs: 3\n", [], "unknown section 'trian'"),
    "unknown key": ("train:\n  epoch: 3\n", [], "unknown key 'train.epoch'"),
    "unknown key via --set": ("", ["train.lr=0.1"], "unknown key 'train.lr'"),
    "unknown section via --set": ("", ["optimizer.name=sgd"], "unknown section 'optimizer'"),
    "section given a value": ("train: 3\n", [], "'train' is a section"),
    "wrong type": ("train:\n  epochs: ten\n", [], "'train.epochs' must be an integer"),
    "bool for int": ("train:\n  batch_size: true\n", [], "'train.batch_size' must be an integer"),
    "float for int": ("", ["train.epochs=2.5"], "'train.epochs' must be an integer"),
    "string for bool": ("train:\n  shuffle: maybe\n", [], "'train.shuffle' must be true or false"),
    "zero epochs": ("", ["train.epochs=0"], "'train.epochs' must be > 0"),
    "negative batch": ("", ["train.batch_size=-8"], "'train.batch_size' must be > 0"),
    "zero learning rate": ("", ["train.learning_rate=0"], "'train.learning_rate' must be > 0"),
    "validation_split 1": ("", ["data.validation_split=1"], "'data.validation_split' must be between 0 and 1"),
    "validation_split 0": ("", ["data.validation_split=0"], "'data.validation_split' must be between 0 and 1"),
    "unknown protocol": ("", ["data.protocol=random"], "'data.protocol' must be one of notebook, standard"),
    "retrain watching validation": ("data:\n  protocol: retrain\n", [],
                                    "callbacks.checkpoint.monitor and callbacks.reduce_lr.monitor cannot watch them"),
    "retrain stopping on validation": ("", ["data.protocol=retrain", "train.schedule=cosine",
                                            "callbacks.checkpoint.save_best_only=false",
                                            "callbacks.early_stopping.enabled=true"],
                                       "so callbacks.early_stopping.monitor cannot"),
    "mixup and cutmix": ("", ["train.mixup=0.2", "train.cutmix=1.0"], "'train.cutmix' must be 0 while train.mixup"),
    "teacher not a path": ("", ["train.distill.teachers=[3]"], "'train.distill.teachers' must be a list of file paths"),
    "distill weight 2": ("", ["train.distill.weight=2"], "'train.distill.weight' must be in [0, 1]"),
    "tiny detection width": ("", ["predict.video_detect_width=10"], "'predict.video_detect_width' must be 24 or more"),
    "unknown precision": ("", ["train.precision=float16"], "'train.precision' must be one of auto, float32"),
    "unknown distribute": ("", ["train.distribute=tpu"], "'train.distribute' must be one of auto, none, mirrored"),
    "bad jit_compile": ("", ["train.jit_compile=sometimes"], "'train.jit_compile' must be auto, true or false"),
    "jit_compile number": ("", ["train.jit_compile=1"], "'train.jit_compile' must be true or false or a string"),
    "unknown monitor": ("", ["callbacks.checkpoint.monitor=val_auc"], "'callbacks.checkpoint.monitor' must be one of"),
    "factor 1": ("", ["callbacks.reduce_lr.factor=1"], "'callbacks.reduce_lr.factor' must be between 0 and 1"),
    "dropout 1": ("", ["model.dropout=1"], "'model.dropout' must be in [0, 1)"),
    "batch_norm_momentum 1": ("", ["model.batch_norm_momentum=1.0"], "'model.batch_norm_momentum' must be in [0, 1)"),
    "bad filters": ("", ["model.filters=[64, -1]"], "'model.filters' must be a list of positive integers"),
    "empty filters": ("", ["model.filters=[]"], "'model.filters' needs at least one entry"),
    "nested name": ("", ["output.name=a/b"], "'output.name' must be a plain folder name"),
    "no equals": ("", ["train.epochs"], "expected key=value"),
    "yaml syntax": ("train:\n  epochs: 3\n  batch_size: [64\n", [], "YAML syntax error at line"),
    "not a mapping": ("- 1\n- 2\n", [], "expected sections"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_configs_name_the_key(tmp_path, case):
    text, overrides, fragment = BAD_CONFIGS[case]
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        load_config(path, overrides)
    assert fragment in str(caught.value)


def test_a_dataset_given_as_the_config_is_refused_at_once(tmp_path):
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,pixels,Usage\n" + ("0," + " ".join(["0"] * 2304) + ",Training\n") * 250)
    with pytest.raises(UserError, match=r"fer2013\.csv is 1 MiB: not a config.*--set data\.path"):
        load_config(path)


def test_yaml_syntax_error_gives_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  path: x\ntrain:\n  epochs: 3\n    batch_size: 4\n")
    with pytest.raises(UserError, match=r"c\.yaml: YAML syntax error at line 5"):
        load_config(path)


@pytest.mark.slow
def test_bad_config_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 0\n")
    runs = tmp_path / "runs"
    assert_user_error(run_script("train.py", "--config", path, "--set", f"output.dir={runs}"),
                      "'train.epochs' must be > 0")
    assert not runs.exists()
    import train

    with pytest.raises(SystemExit) as exited:
        train.main(["--config", str(tmp_path / "missing.yaml")])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: config file {tmp_path / 'missing.yaml'} not found"


def test_the_old_name_of_the_notebook_protocol_still_works(tmp_path):
    """Configs written before data.protocol "seed" became "notebook" (an unfinished run's, say) still load."""
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  protocol: seed\n")
    assert load_config(old)["data"]["protocol"] == "notebook"
    assert load_config(None, ["data.protocol=seed"])["data"]["protocol"] == "notebook"
