# Sourced by gpu/faithful.sh, gpu/ingredients.sh and gpu/recipe.sh, from the repository's root: Keras from the
# carried wheels (where it is missing), the JAX backend, what the GPU is (OUT/nvidia-smi.txt), and FER2013 as
# /tmp/fer2013.csv.
rm -rf /tmp/runs /tmp/ship  # a call run again on a machine still warm starts its runs afresh
RESULTS=${RESULTS:-results}  # where results.py publishes; a try on a CPU: RESULTS=/tmp/results, leaving results/ alone
mkdir -p "$OUT" /tmp/runs
if [ -d .whl ] && ! python3 -c "import keras" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site || exit 1
fi
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
# JAX's persistent compilation cache: a training that compiles what an earlier one of this call did (another seed,
# the run after a probe) loads it instead; the same programs, so the same training (the demo's histories matched).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax-cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
if [ ! -s /tmp/fer2013.csv ]; then  # FER2013's bundle, xz-compressed by gpu/carry.sh, then its CSV
    mkdir -p /tmp/fer2013-bundle && cp .device/make_fer2013.py /tmp/fer2013-bundle/ \
        && python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.device/fer2013-jpeg.npz.xz'),
open('/tmp/fer2013-bundle/fer2013-jpeg.npz', 'wb'))" \
        && python3 /tmp/fer2013-bundle/make_fer2013.py csv /tmp/fer2013.csv || exit 1
fi
