#!/usr/bin/env bash
# The device tool's command for the GPU check (docs/gpu.md), run in the repository root of the copy on the
# device machine, after `python benchmarks/gpu_pack.py` here and a first call that carried .gpu_a:
#   installs the carried wheels, joins the SmolLM2 GGUF from its two parts (when the first call's part is
#   still on the machine), and runs benchmarks/gpu_check.py with its output in $OUT.
# Extra arguments go to gpu_check.py (e.g. --parts smollm2_table --budget_s 200 for a second try).
set -u
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
site="${SITE:-/tmp/site}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
  .gpu/wheels/*.whl || exit 1
export PYTHONPATH="$PWD/src:$site" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

smollm2=""
if [ -f .gpu_a/smollm2.gguf.part1 ]; then
  cat .gpu_a/smollm2.gguf.part1 .gpu/smollm2.gguf.part2 > /tmp/smollm2.gguf
  if (cd /tmp && sha256sum --quiet -c "$OLDPWD/.gpu/smollm2.gguf.sha256"); then
    smollm2="--smollm2 /tmp/smollm2.gguf"
  else
    echo "gpu_device.sh: the GGUF's parts do not match its checksum: no SmolLM2 table"
  fi
else
  echo "gpu_device.sh: no .gpu_a/smollm2.gguf.part1 (the first call's machine was given back): no SmolLM2 table"
fi

# shellcheck disable=SC2086  # $smollm2 is two words or none
python3 benchmarks/gpu_check.py --out "$out" --data .gpu/data/sms_spam/SMSSpamCollection \
  --tokenizer .gpu/data/gpt2_bpe --gsm8k .gpu/data/gsm8k --smollm2_arch .gpu/smollm2_arch $smollm2 "$@" \
  2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
