#!/usr/bin/env bash
# Binder check, in two steps:
#
# 1. `jupyter-repo2docker --no-build --debug .` (installed in a scratch environment when it
#    is not on PATH) prints the Dockerfile mybinder.org would build, without Docker. The
#    check fails when repo2docker refuses the configuration (it exits non-zero on, e.g., an
#    invalid binder/runtime.txt), when the Dockerfile does not use runtime.txt's Python or
#    does not install binder/requirements.txt after copying the repository (which
#    `-e .` needs), or when requirements.txt does not install the package itself (`-e .`,
#    with extras or not: with binder/ present, repo2docker ignores pyproject.toml).
# 2. A fresh virtual environment built from binder/ the way mybinder.org does (the Python
#    of binder/runtime.txt, then `pip install -r binder/requirements.txt` in the repository
#    root) runs every notebook, top to bottom.
#
# usage: .ci/binder_check.sh [--local-torch]
#
#   --local-torch  for machines that cannot reach download.pytorch.org (this CI): install
#                  the pinned torch==X line from pip's configured indexes first and leave
#                  out the --extra-index-url lines; everything else in the file is
#                  installed exactly as Binder installs it.
set -euo pipefail
cd "$(dirname "$0")/.."

local_torch=0
for argument in "$@"; do
    case "$argument" in
        --local-torch) local_torch=1 ;;
        *) echo "usage: $0 [--local-torch]" >&2; exit 2 ;;
    esac
done

requirements=binder/requirements.txt
runtime=$(tr -d '[:space:]' < binder/runtime.txt)        # e.g. python-3.11
version=${runtime#python-}
python=$(command -v "python$version" || true)
if [[ -z "$python" ]]; then
    python=$(command -v python3)
    echo "binder check: python$version not found; using $("$python" --version) instead" >&2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/binder-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. What mybinder.org would build (no Docker needed).
grep -qE '^-e \.(\[[a-z0-9_,-]+\])?$' binder/requirements.txt \
    || { echo "binder check: binder/requirements.txt does not install the package (-e .)" >&2
         exit 1; }
repo2docker=$(command -v jupyter-repo2docker || true)
if [[ -z "$repo2docker" ]]; then
    "$python" -m venv "$work/repo2docker"
    "$work/repo2docker/bin/python" -m pip --quiet install jupyter-repo2docker
    repo2docker=$work/repo2docker/bin/jupyter-repo2docker
fi
echo "binder check: jupyter-repo2docker $("$repo2docker" --version 2>&1 | tail -n 1)" \
    "--no-build --debug ."
dockerfile=$work/dockerfile.txt
"$repo2docker" --no-build --debug . > "$dockerfile" 2>&1 \
    || { cat "$dockerfile" >&2; echo "binder check: repo2docker refused binder/" >&2; exit 1; }
grep -q "Building conda environment for python=$version" "$dockerfile" \
    || { echo "binder check: repo2docker does not use python $version" >&2; exit 1; }
copy_line=$(grep -n -m 1 '^COPY .* src/ ' "$dockerfile" | cut -d: -f1 || true)
install_line=$(grep -n -m 1 'pip install --no-cache-dir -r "binder/requirements.txt"' \
    "$dockerfile" | cut -d: -f1 || true)
[[ -n "$install_line" ]] \
    || { echo "binder check: repo2docker does not install binder/requirements.txt" >&2
         exit 1; }
[[ -n "$copy_line" && "$install_line" -gt "$copy_line" ]] \
    || { echo "binder check: repo2docker installs binder/requirements.txt before copying" \
              "the repository, so -e . would fail" >&2; exit 1; }

# 2. Binder's environment, built fresh, runs every notebook.
# Kernels and settings come from the fresh environment only, not from ~/.local or ~/.jupyter.
export JUPYTER_DATA_DIR=$work/jupyter-data JUPYTER_CONFIG_DIR=$work/jupyter-config
export JUPYTER_RUNTIME_DIR=$work/jupyter-runtime
echo "binder check: fresh virtual environment in $work/venv ($("$python" --version))"
"$python" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --quiet)
install=("${pip[@]}" install --no-compile)

if (( local_torch )); then
    torch_pin=$(grep -E '^torch==' "$requirements" || true)
    if [[ -n "$torch_pin" ]]; then
        echo "binder check: $torch_pin from the configured indexes (no download.pytorch.org)"
        "${install[@]}" "$torch_pin"
    fi
    grep -v -E '^--extra-index-url' "$requirements" > "$work/requirements.txt"
    requirements=$work/requirements.txt
fi

echo "binder check: pip install -r binder/requirements.txt"
"${install[@]}" -r "$requirements"
"${pip[@]}" check

# What Binder serves: JupyterLab with the widget manager, a python3 kernel of this env.
"$work/venv/bin/jupyter" labextension list 2>&1 | grep -q "@jupyter-widgets/jupyterlab-manager" \
    || { echo "binder check: the ipywidgets JupyterLab extension is missing" >&2; exit 1; }
"$work/venv/bin/python" -c "import nbgradcheck; print('binder check: nbgradcheck', \
nbgradcheck.__version__, 'from', nbgradcheck.__file__)"

# Every notebook, in its own folder, in a python3 kernel of the fresh environment; all of
# them run, then the failures are listed. The notebooks in the repository are not touched.
shopt -s nullglob
notebooks=(notebooks/*.ipynb)
if (( ${#notebooks[@]} == 0 )); then
    echo "binder check: no notebooks found in notebooks/" >&2
    exit 1
fi
PATH="$work/venv/bin:$PATH" "$work/venv/bin/python" - "${notebooks[@]}" <<'PYTHON'
import sys
import time
from pathlib import Path

import nbclient
import nbformat

failed = []
for name in sys.argv[1:]:
    path = Path(name)
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    try:
        nbclient.NotebookClient(notebook, timeout=300, startup_timeout=120,
                                kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    except nbclient.exceptions.CellExecutionError as error:
        failed.append(name)
        print(f"binder check: {name} FAILED\n{error}", file=sys.stderr)
        continue
    print(f"binder check: {name} ran in {time.perf_counter() - started:.1f} s")
if failed:
    sys.exit(f"binder check: {len(failed)} notebooks failed: {', '.join(failed)}")
PYTHON

echo "binder check: passed (${#notebooks[@]} notebooks)"
