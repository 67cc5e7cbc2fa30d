#!/usr/bin/env bash
# Convert a Hugging Face folder to a quantized GGUF, measure what quantization lost against the folder itself, and
# fail when a gate is crossed, keeping the report and the JUnit file either way. The CI workflow in
# examples/github-actions/quantize-and-gate.yml runs exactly this script, so it can be tried and tested locally.
#
# usage: quantize_and_gate.sh MODEL_DIR OUT_DIR
#   QCONV_TYPE       quantization type for `qconv to-gguf --type` (default q4_k_m)
#   QCONV_GATES      thresholds for `qconv eval --gate` (default kld=0.10,top1=0.85,task_drop=0.10)
#   QCONV_TASKS      optional JSONL task file, scored as its own suites beside the built-in ones
#   QCONV_EVAL_ARGS  more `qconv eval` arguments, split on spaces, e.g. "--max-tokens 256 --max-tasks 4"
#
# Writes OUT_DIR/model-TYPE.gguf, OUT_DIR/report/ (report.json, report.html, charts) and OUT_DIR/junit.xml.
# Exit code is qconv eval's: 0 every gate passed, 2 a gate failed, 1 an error (a bad argument, a broken model, or a
# report that does not match its schema).
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 MODEL_DIR OUT_DIR" >&2
    exit 1
fi
model_dir=$1
out_dir=$2
qconv_type=${QCONV_TYPE:-q4_k_m}
gates=${QCONV_GATES:-kld=0.10,top1=0.85,task_drop=0.10}
# Word splitting is wanted here: QCONV_EVAL_ARGS holds several options in one variable (CI inputs are strings).
read -r -a eval_args <<< "${QCONV_EVAL_ARGS:-}"
if [[ -n ${QCONV_TASKS:-} ]]; then
    eval_args+=(--tasks "$QCONV_TASKS")
fi

# qconv writes its outputs atomically but does not create parent folders: a missing OUT_DIR is a user error.
mkdir -p "$out_dir"
gguf="$out_dir/model-$qconv_type.gguf"

# Step 1: convert. A failure here is an error (exit 1), never a gate result; set -e stops the script.
# -q: progress bars redraw with carriage returns, which CI logs show as one line per redraw.
qconv to-gguf "$model_dir" --type "$qconv_type" -o "$gguf" -q

# Step 2: evaluate against the unquantized folder and apply the gates. Its exit code is the verdict, so it is kept
# rather than letting set -e end the script: a failed gate must still leave a validated report for the artifact.
eval_rc=0
qconv eval "$gguf" --ref "$model_dir" --gate "$gates" -o "$out_dir/report" --junit "$out_dir/junit.xml" -q \
    ${eval_args[@]+"${eval_args[@]}"} || eval_rc=$?  # this spelling of an empty array passes set -u in bash 3.2

# Step 3: check the report against the JSON Schema shipped with the installed qconv, so whatever later reads
# report.json (dashboards, a comparison between runs) can rely on its shape. python3 is the interpreter qconv was
# installed in (setup-python, a venv). A user error (exit 1) may have stopped eval before it wrote anything, and
# there is then nothing to check.
report="$out_dir/report/report.json"
if [[ -f $report ]]; then
    if ! python3 - "$report" <<'EOF'
import json
import sys
from importlib.resources import files

import jsonschema

path = sys.argv[1]
schema = json.loads(files("qconv.converter.quality").joinpath("report.schema.json").read_text())
report = json.loads(open(path).read())
try:
    jsonschema.validate(report, schema)
except jsonschema.ValidationError as e:
    sys.exit(f"{path}: does not match qconv's report schema at /{'/'.join(map(str, e.absolute_path))}: {e.message}")
# report.json is rewritten after every suite: complete is false when eval stopped part-way.
if not report["complete"]:
    sys.exit(f"{path}: incomplete (finished: {', '.join(report['finished']) or 'nothing'})")
failed = report.get("gate_failures") or []
print(f"{path}: valid; {len(failed)} gate failure(s)" + "".join(f"\n  {line}" for line in failed))
EOF
    then
        exit 1
    fi
elif [[ $eval_rc -ne 1 ]]; then
    echo "$0: qconv eval exited $eval_rc but wrote no $report" >&2
    exit 1
fi

# Step 4: hand back eval's verdict only now, after the report and JUnit file are in place for the upload steps.
exit "$eval_rc"
