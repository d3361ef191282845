#!/usr/bin/env bash
# Qualcomm HTP path (target tflite-qnn, `meki run --backend qnn-sim`): everything from PyPI, pinned.
#   onnxruntime-qnn 2.7.0 carries QAIRT 2.51's x86_64 host libraries (libQnnHtp.so, libHtpPrepare.so, ...)
#   and the QNN execution provider that runs context binaries on the HTP simulator; pip installs them into
#   the venv (pyproject's `qnn` extra, installed by `make setup` before this script runs). LiteRT's Qualcomm compiler plugin also links libQnnLpai.so (the
#   low-power AI backend), which no wheel ships and which the HTP compile never calls: an empty shared
#   object of that name lets the plugin load. Built here with the system C compiler into
#   <venv>/lib/meki-qnn/ (where pipeline/export/qnn_backend.py looks).
# Usage: bash scripts/setup_qnn.sh VENV_DIR
set -euo pipefail
venv="${1:?usage: setup_qnn.sh VENV_DIR}"
out="$venv/lib/meki-qnn"
mkdir -p "$out"
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
echo 'void meki_qnn_lpai_placeholder(void) {}' > "$src/lpai.c"
"${CC:-cc}" -shared -fPIC -o "$out/libQnnLpai.so" "$src/lpai.c"
"$venv/bin/python" - <<'PY'
import onnxruntime_qnn, pathlib
libs = pathlib.Path(onnxruntime_qnn.get_qnn_htp_path()).parent
missing = [n for n in ("libQnnHtp.so", "libHtpPrepare.so", "libQnnSystem.so", "libQnnIr.so", "libQnnSaver.so")
           if not (libs / n).is_file()]
assert not missing, f"onnxruntime-qnn lacks {missing}"
print(f"QNN host libraries: {libs}")
PY
