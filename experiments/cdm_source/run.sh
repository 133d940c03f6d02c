#!/usr/bin/env bash
# CDM reproduction (issue 7) at a CPU-feasible size: train cdm_code on stdlib-code and cdm_v3 on
# stdlib-docs prose, then run every probe and the controls.  One CPU thread per job, jobs in series.
#   bash experiments/cdm_source/run.sh            # everything (~45 min of training + ~5 min of probes on 1 core)
#   bash experiments/cdm_source/run.sh code       # cdm_code: train + probes
#   bash experiments/cdm_source/run.sh v3         # cdm_v3:   train + probes
#   bash experiments/cdm_source/run.sh code_seed1 # cdm_code with --seed 1 (seed spread of the routing MI)
#   bash experiments/cdm_source/run.sh v3_nolbl   # cdm_v3 without the load-balancing loss (the card's ablation)
#   CODE_TOKENS=N V3_TOKENS=M bash experiments/cdm_source/run.sh   # other token budgets (see budget())
# Runs go to runs/experiments/cdm/{code,v3} (git-ignored); logs with wall times to runs/experiments/cdm/logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1
PY=.venv/bin/python MEMLAB=.venv/bin/memlab EXP=experiments/cdm_source ROOT=${ROOT:-runs/experiments/cdm}
TRAIN_EXTRA=${TRAIN_EXTRA:-}   # smoke tests only, e.g. "--total-tokens 20480 --save-interval 5"
# Token budgets (default: the YAML's); set from a measured tokens/s so that each run fits its time
# budget on a shared CPU.  Checkpoints and evaluations: 8 per run.
budget() {  # budget TOKENS -> the train flags for that many tokens (2048 tokens per step)
  local steps=$(( $1 / 2048 ))
  echo "--total-tokens $(( steps * 2048 )) --save-interval $(( steps / 8 )) --eval-interval $(( steps / 8 ))"
}
CODE_BUDGET=${CODE_TOKENS:+$(budget $CODE_TOKENS)}
V3_BUDGET=${V3_TOKENS:+$(budget $V3_TOKENS)}
PROBE_TOKENS=${PROBE_TOKENS:-32768}
mkdir -p "$ROOT/logs"

step() {  # step NAME CMD...: run, log, and record the wall time
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "$(date -u +%H:%M:%S) start $name: $*" | tee -a "$ROOT/logs/steps.log"
  local rc=0
  "$@" > "$ROOT/logs/$name.log" 2>&1 || rc=$?
  echo "$(date -u +%H:%M:%S) done  $name rc=$rc wall=$(( $(date +%s) - t0 ))s" | tee -a "$ROOT/logs/steps.log"
  if [[ $rc != 0 && $name == train_* ]]; then exit $rc; fi  # a failed probe does not stop the others
}

last_ckpt() {  # the newest checkpoints/step_N of a run (by N)
  ls -d "$1"/checkpoints/step_* | awk -F'step_' '{print $NF, $0}' | sort -n | tail -1 | cut -d' ' -f2
}

code() {
  local R=$ROOT/code
  step train_code $MEMLAB train --config $EXP/cdm_code.yaml --output-dir $R --overwrite $CODE_BUDGET $TRAIN_EXTRA
  local C; C=$(last_ckpt $R)
  for p in routing gates alphas; do
    step probe_code_$p $MEMLAB probe --checkpoint "$C" --probe $p --corpus stdlib-code --max-tokens $PROBE_TOKENS --out-dir $R/probes
  done
  step probe_code_domains $MEMLAB probe --checkpoint "$C" --probe domains --max-tokens $PROBE_TOKENS --out-dir $R/probes
  step probe_code_trajectory $MEMLAB probe --checkpoint $R --probe trajectory --corpus stdlib-code --max-tokens $PROBE_TOKENS --out-dir $R/probes
  step controls_code_mi $PY $EXP/controls.py mi --checkpoint "$C" --corpus stdlib-code --init --max-tokens $PROBE_TOKENS --out $R/probes/controls_mi.json
  step controls_code_val $PY $EXP/controls.py val --checkpoint "$C" --corpus stdlib-code --max-tokens $((8 * PROBE_TOKENS)) --out $R/probes/controls_val.json
  step controls_code_domains $PY $EXP/controls.py domains --checkpoint "$C" --trained-on stdlib-code --val-fraction 0.01 --max-tokens $PROBE_TOKENS --out $R/probes/controls_domains.json
}

v3() {
  local R=$ROOT/v3 VF="--val-fraction 0.05"
  step train_v3 $MEMLAB train --config $EXP/cdm_v3.yaml --output-dir $R --overwrite $V3_BUDGET $TRAIN_EXTRA
  local C; C=$(last_ckpt $R)
  step probe_v3_alphas $MEMLAB probe --checkpoint "$C" --probe alphas --corpus stdlib-docs $VF --max-tokens $PROBE_TOKENS --out-dir $R/probes
  step probe_v3_gates $MEMLAB probe --checkpoint "$C" --probe gates --corpus stdlib-docs $VF --max-tokens $PROBE_TOKENS --out-dir $R/probes
  step probe_v3_domains $MEMLAB probe --checkpoint "$C" --probe domains $VF --max-tokens $PROBE_TOKENS --out-dir $R/probes
  step probe_v3_routing_code $MEMLAB probe --checkpoint "$C" --probe routing --corpus stdlib-code --max-tokens $PROBE_TOKENS --out-dir $R/probes
  step probe_v3_trajectory $MEMLAB probe --checkpoint $R --probe trajectory --corpus stdlib-docs $VF --max-tokens $PROBE_TOKENS --out-dir $R/probes
  step controls_v3_alpha_traj $PY $EXP/controls.py alpha_traj --checkpoint $R --out $R/probes/controls_alpha_traj.json
  step controls_v3_val $PY $EXP/controls.py val --checkpoint "$C" --corpus stdlib-docs $VF --max-tokens $((2 * PROBE_TOKENS)) --out $R/probes/controls_val.json
  step controls_v3_domains $PY $EXP/controls.py domains --checkpoint "$C" --trained-on stdlib-docs $VF --max-tokens $PROBE_TOKENS --out $R/probes/controls_domains.json
  step controls_v3_mi $PY $EXP/controls.py mi --checkpoint "$C" --corpus stdlib-code --init --max-tokens $PROBE_TOKENS --out $R/probes/controls_mi.json
}

code_seed1() {  # a second seed of the cdm_code run (the seed-to-seed spread of the routing numbers)
  local R=$ROOT/code_seed1
  step train_code_seed1 $MEMLAB train --config $EXP/cdm_code.yaml --output-dir $R --overwrite --seed 1 $CODE_BUDGET $TRAIN_EXTRA
  local C; C=$(last_ckpt $R)
  step probe_code_seed1_routing $MEMLAB probe --checkpoint "$C" --probe routing --corpus stdlib-code --max-tokens $PROBE_TOKENS --out-dir $R/probes
  step probe_code_seed1_alphas $MEMLAB probe --checkpoint "$C" --probe alphas --corpus stdlib-code --max-tokens $PROBE_TOKENS --out-dir $R/probes
  step probe_code_seed1_trajectory $MEMLAB probe --checkpoint $R --probe trajectory --corpus stdlib-code --max-tokens $PROBE_TOKENS --out-dir $R/probes
  step controls_code_seed1_mi $PY $EXP/controls.py mi --checkpoint "$C" --corpus stdlib-code --max-tokens $PROBE_TOKENS --out $R/probes/controls_mi.json
}

v3_nolbl() {  # the card's LBL ablation: cdm_v3 with --cdm.load-balance 0 (everything else equal)
  local R=$ROOT/v3_nolbl VF="--val-fraction 0.05"
  step train_v3_nolbl $MEMLAB train --config $EXP/cdm_v3.yaml --output-dir $R --overwrite --cdm.load-balance 0 $V3_BUDGET $TRAIN_EXTRA
  local C; C=$(last_ckpt $R)
  step probe_v3_nolbl_alphas $MEMLAB probe --checkpoint "$C" --probe alphas --corpus stdlib-docs $VF --max-tokens $PROBE_TOKENS --out-dir $R/probes
  step probe_v3_nolbl_trajectory $MEMLAB probe --checkpoint $R --probe trajectory --corpus stdlib-docs $VF --max-tokens $PROBE_TOKENS --out-dir $R/probes
  step controls_v3_nolbl_alpha_traj $PY $EXP/controls.py alpha_traj --checkpoint $R --out $R/probes/controls_alpha_traj.json
  step controls_v3_nolbl_domains $PY $EXP/controls.py domains --checkpoint "$C" --trained-on stdlib-docs $VF --max-tokens $PROBE_TOKENS --out $R/probes/controls_domains.json
  # paired held-out CE, LBL minus no-LBL, on the same windows (needs the v3 run)
  step controls_v3_paired_val $PY $EXP/controls.py paired_val --checkpoint "$(last_ckpt $ROOT/v3)" --other "$C" --corpus stdlib-docs $VF --max-tokens $((2 * PROBE_TOKENS)) --out $ROOT/v3/probes/controls_paired_val_lbl_vs_nolbl.json
}

case "${1:-all}" in
  code) code ;;
  v3) v3 ;;
  code_seed1) code_seed1 ;;
  v3_nolbl) v3_nolbl ;;
  all) code; v3 ;;
  *) echo "usage: $0 [all|code|v3|code_seed1|v3_nolbl]" >&2; exit 2 ;;
esac
