"""Small helpers that several scripts share: one-line user errors, quiet imports, files written atomically."""
import contextlib
import errno
import functools
import hashlib
import importlib.util
import json
import os
import re
import signal
import sys
import tempfile


TEST_SIGNAL = "FER2013_TEST_SIGNAL"


MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")


def shipped_model(folder=MODELS):
    """The model shipped with the code (models/fer2013-<name>.keras), which evaluate.py and predict.py use when no
    --checkpoint is given; a UserError while none is shipped."""
    found = sorted(name for name in os.listdir(folder) if name.startswith("fer2013-") and name.endswith(".keras")) \
        if os.path.isdir(folder) else []
    if not found:
        raise UserError(f"no --checkpoint given, and no model is shipped in {folder} yet: train one (python train.py "
                        "--config config.yaml) and give --checkpoint runs/<run>/best.keras")
    return os.path.join(folder, found[-1])


def signal_at(point):
    """For tests: send this process the signal that FER2013_TEST_SIGNAL names ("SIGKILL@epoch 3 batch 2",
    "SIGKILL@replace best.keras epoch 2", predict.py's "SIGINT@input 3") when it reaches that point, so that a
    test interrupts a run at a named place instead of racing a timer. Does nothing without that variable."""
    name, _, at = os.environ.get(TEST_SIGNAL, "").partition("@")
    if at and at == point:
        os.kill(os.getpid(), getattr(signal, name))


def out_of_memory(error):
    """The first line of what an exception says, where it says that memory ran out (NumPy's MemoryError,
    TensorFlow's ResourceExhaustedError, JAX's RESOURCE_EXHAUSTED, PyTorch's OutOfMemoryError or its CPU
    allocator's); else None."""
    text = str(error).strip()
    if not (isinstance(error, MemoryError) or type(error).__name__ in ("ResourceExhaustedError", "OutOfMemoryError")
            or "RESOURCE_EXHAUSTED" in text[:300] or "can't allocate memory" in text[:300]):
        return None
    line = re.sub(r"^\{\{[^}]*\}\}\s*", "", text.splitlines()[0] if text else type(error).__name__)
    return line if len(line) <= 160 else line[:157] + "..."


class UserError(Exception):
    """Something the user supplied is wrong (file, config, checkpoint): reported in one line, exit status 2."""


def os_error_line(error):
    """The line for an OSError that is the user's to fix: a full disk, a read-only place, a file that cannot be
    read or written, a file where a folder is needed (--out photo.jpg) or a folder where a file is."""
    if error.errno in (errno.EEXIST, errno.ENOTDIR) and error.filename:
        path = os.path.abspath(error.filename)  # the file may be the path itself or one of the folders above it
        while not os.path.isfile(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        if os.path.isfile(path):
            return f"{path} is a file, where a folder is needed"
    if error.errno == errno.EISDIR and error.filename:  # os.replace(temporary, folder) names the folder second
        return f"{error.filename2 or error.filename} is a folder, where a file is needed"
    verb = "" if error.errno == errno.EACCES else "writing "  # permission denied: reading or writing
    return os.strerror(error.errno) + (f" ({verb}{error.filename})" if error.filename else "")


def exit_on_user_error(main):
    """Run a script's main so that a UserError, a disk that is full, a file that cannot be written (a read-only file
    system) or read (permission denied) or is in a folder's place (os_error_line), or a device out of memory prints
    one line (no traceback) and exits with status 2; Ctrl-C prints "interrupted" and exits with status 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:  # Ctrl-C: what a script keeps, it has written whole (atomic files)
            print("\ninterrupted", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # output piped into `head` and the like: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as error:  # a full disk, a read-only place, a file in a folder's place: the user's to fix
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EEXIST, errno.ENOTDIR,
                                   errno.EISDIR):
                raise
            print(f"error: {os_error_line(error)}", file=sys.stderr)
        except Exception as error:  # a batch too big for the device: the user's to fix, like a bad config
            said = out_of_memory(error)
            if said is None:
                raise
            print(f"error: out of memory ({said}): smaller batches need less (train.batch_size, "
                  "train.validation_batch_size; evaluate.py --batch-size)", file=sys.stderr)
            sys.exit(2)
        # Only an OSError of os_error_line's gets here.
        if main.__module__ == "__main__":
            # A script ends here, without the C libraries' exit handlers: HDF5's closes the files that a failed
            # write left open, and crashed doing so (rc 139).
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(2)
        sys.exit(2)

    return wrapper


@contextlib.contextmanager
def native_stderr_held():
    """Hold back what native code writes to stderr inside the block, replaying it only if the block fails.

    TensorFlow 2.21 prints C++ log lines at import time that no setting silences (TF_CPP_MIN_LOG_LEVEL
    included); around `import keras` this keeps a user's one-line error one line.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


BACKENDS = ("tensorflow", "jax", "torch")  # Keras's, in the order one is taken where KERAS_BACKEND is not set


def installed_backend(environ=os.environ, keras_home=None, have=None):
    """(the backend Keras would take, the one to run on instead) where KERAS_BACKEND is not set and the first, which
    keras.json names (Keras writes tensorflow there by itself) or else TensorFlow, is not installed: the first of
    TensorFlow, JAX and PyTorch that is. None where the variable is set or that backend is there; a UserError where
    none is, or where the variable names one that is not. have(name): whether a package is installed (default:
    importlib finds it)."""
    have = have or (lambda name: importlib.util.find_spec(name) is not None)
    if chosen := environ.get("KERAS_BACKEND"):
        if chosen in BACKENDS and not have(chosen):
            raise UserError(f"KERAS_BACKEND={chosen}, but {chosen} is not installed")
        return None
    path = os.path.join(keras_home or environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "keras.json")
    try:
        with open(path, encoding="utf-8") as f:
            wanted = json.load(f).get("backend") or "tensorflow"
    except (OSError, ValueError, AttributeError):
        wanted = "tensorflow"
    if have(wanted):
        return None
    for name in BACKENDS:
        if have(name):
            return wanted, name
    raise UserError("Keras needs TensorFlow, JAX or PyTorch, and none is installed: pip install -r requirements.txt "
                    "(TensorFlow) or -r requirements-jax.txt (JAX, lighter)")


def start_backend():
    """What a script does before anything imports Keras. Where KERAS_BACKEND is not set and TensorFlow (or
    keras.json's backend) is not installed, it becomes the one that is (installed_backend), with a note. TensorFlow
    reads TF_ENABLE_ONEDNN_OPTS once, at its import, and turns its oneDNN CPU kernels on by itself only on CPUs with
    AVX512_VNNI, AVX512_BF16 or AMX; this asks for them on every CPU (they are faster on AVX2-only ones too:
    docs/performance.md), unless the variable is set already (TF_ENABLE_ONEDNN_OPTS=0 keeps TensorFlow's own
    kernels). Then Keras is imported and TensorFlow probes its devices with their log lines held back, so that
    those never land in front of a one-line error."""
    if choice := installed_backend():
        os.environ["KERAS_BACKEND"] = choice[1]
        print(f"note: {choice[0]} is not installed, so Keras runs on {choice[1]} (KERAS_BACKEND chooses)",
              file=sys.stderr)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    with native_stderr_held():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()


@contextlib.contextmanager
def replaced_atomically(path):
    """Yield a temporary name beside `path` (same extension, which Keras and matplotlib read) to write to,
    and rename it over `path` only when the block succeeds: a kill at any instant leaves the old file whole.
    Temporary names (NAME.writing-PID.EXT) are this process's own, so concurrent writers never mix."""
    folder, name = os.path.split(os.fspath(path))
    first, dot, rest = name.partition(".")
    temporary = os.path.join(folder, f"{first}.writing-{os.getpid()}{dot}{rest}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path, text):
    """Write a text file atomically."""
    with replaced_atomically(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        f.write(text)


def without_home(text):
    """The text with the user's home folder written as ~, so that no machine's paths land in the repository."""
    home = os.path.expanduser("~").rstrip("/")
    return text.replace(home + "/", "~/") if home else text


def pyplot():
    """matplotlib.pyplot, drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path, dpi=100):
    """Save a matplotlib figure atomically and free it."""
    with replaced_atomically(path) as temporary:
        figure.savefig(temporary, dpi=dpi)
    pyplot().close(figure)
