# Sourced by gpu/faithful.sh, gpu/ingredients.sh and gpu/recipe.sh, from the repository's root: Keras from the
# carried wheels (where it is missing), the JAX backend, what the GPU is (OUT/nvidia-smi.txt), and FER2013 as
# /tmp/fer2013.csv.
mkdir -p "$OUT" /tmp/runs
if [ -d .whl ] && ! python3 -c "import keras" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site || exit 1
fi
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
[ -s /tmp/fer2013.csv ] || python3 .device/make_fer2013.py csv /tmp/fer2013.csv || exit 1
