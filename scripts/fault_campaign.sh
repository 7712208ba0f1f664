#!/usr/bin/env bash
# Fault campaign: stop signals at random moments, kills during checkpoint writes, a full
# disk, a file size limit and a frozen rank under mpirun, against a model large enough to
# run oneDNN's big JIT sgemm kernels (d_model 128, 16 x 128 tokens per step, 1 thread).
# Every interrupted run is checked for a complete checkpoint (ckpt info --verify) and
# resumed, and its per-step losses (metrics.jsonl loss_hex) and final validation loss
# are compared bit for bit with an uninterrupted run.
#
#   scripts/fault_campaign.sh                 # 60 signal trials, the rest as below
#   SEED=123 TRIALS=80 scripts/fault_campaign.sh
#
# Environment: KVROUTE (binary, default build-cpu/kvroute, else build/kvroute), SEED (the
# random timings; printed, so a campaign can be replayed), TRIALS (random-signal runs, default
# 60), WORK (scratch directory, default a new one under /tmp; removed at the end unless
# KEEP=1), PARTS (which of the parts 1-6 below to run, default 123456). The full-disk part mounts a small tmpfs and needs root; without it that part is
# skipped and says so. The MPI part needs mpirun on PATH. Prints one line per trial and a
# summary; exits non-zero if anything crashed, a checkpoint was lost or a resume differed.
set -u
cd "$(dirname "$0")/.."
KV=${KVROUTE:-}
if [ -z "$KV" ]; then
  for b in build-cpu/kvroute build/kvroute; do [ -x "$b" ] && KV=$PWD/$b && break; done
fi
[ -x "${KV:-}" ] || { echo "no kvroute binary (build it, or set KVROUTE)" >&2; exit 2; }
SEED=${SEED:-$(( $(date +%s) % 100000 ))}
TRIALS=${TRIALS:-60}
PARTS=${PARTS:-123456}
part() { [[ $PARTS == *$1* ]]; }
WORK=${WORK:-$(mktemp -d /tmp/kvroute_faults.XXXXXX)}
mkdir -p "$WORK"
RANDOM=$SEED
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "fault campaign: binary $KV, seed $SEED, $TRIALS signal trials, work dir $WORK"

declare -A count
bump() { count[$1]=$(( ${count[$1]:-0} + 1 )); }
problems=0
problem() { echo "  PROBLEM: $*"; problems=$((problems + 1)); bump problems; }

# ---------------------------------------------------------------- setup
# A deterministic corpus (awk, no external data): ~40k bytes of verse-like lines.
awk 'BEGIN { srand(7); split("light earth water heaven and the God said was made darkness day night firmament", w, " ");
             for (i = 0; i < 800; i++) { line = ""; for (j = 0; j < 9; j++) line = line w[1 + int(rand() * 14)] " ";
                                          print line i % 17 "." } }' > "$WORK/corpus.txt"
STEPS=12
cat > "$WORK/big.yaml" <<EOF
model: {vocab_size: 256, d_model: 128, n_layers: 3, n_heads: 4, n_kv_heads: 2, d_ff: 384, context: 128}
routing: {mode: stochastic, p: 0.5, scheme: any, granularity: sequence}
train: {batch_size: 16, seq_len: 128, steps: $STEPS, lr: 0.003, warmup_steps: 3, log_interval: 1, threads: 1,
        eval_batches: 2, eval_interval: 0, checkpoint: {interval: 2, keep_last: 2}}
data: {train_path: $WORK/corpus.txt}
EOF
cat > "$WORK/small.yaml" <<EOF
model: {vocab_size: 256, d_model: 32, n_layers: 3, n_heads: 2, n_kv_heads: 1, d_ff: 64, context: 32}
routing: {mode: none}
train: {batch_size: 2, seq_len: 32, steps: 100000, lr: 0.01, warmup_steps: 2, log_interval: 1, eval_batches: 3,
        threads: 1, checkpoint: {interval: 10, keep_last: 2}}
data: {train_path: $WORK/corpus.txt}
EOF

# "step loss_hex" per step (a later line for a step, after a resume, replaces an earlier one),
# then the final validation loss.
losses() {
  sed -n 's/.*"step": \([0-9]*\),.*"loss_hex": "\([^"]*\)".*/\1 \2/p' "$1/metrics.jsonl" |
    awk '{ v[$1] = $2 } END { for (s in v) print s, v[s] }' | sort -n
  grep '"val_loss"' "$1/metrics.jsonl" | tail -1 | sed 's/.*"val_loss": \([^,}]*\).*/val \1/'
}
latest_ok() {  # the run's latest checkpoint is complete (every tensor's CRC-32)
  local l; l=$(cat "$1/checkpoints/latest" 2>/dev/null) || return 1
  "$KV" ckpt info --verify --no-config "$1/checkpoints/$l" > /dev/null 2>&1
}
latest_step() { local l; l=$(cat "$1/checkpoints/latest" 2>/dev/null) || { echo 0; return; }; l=${l#step_}; echo $((10#${l%.h5})); }
wait_for_file() {  # PATTERN TIMEOUT_S: until a file matches (compgen: no process per poll)
  local deadline=$(( SECONDS + $2 ))
  while ! compgen -G "$1" > /dev/null; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.002
  done
}
rand_ms() { echo $(( (RANDOM * 32768 + RANDOM) % $1 )); }
sleep_ms() { sleep "$(printf '%d.%03d' $(( $1 / 1000 )) $(( $1 % 1000 )))"; }
crashed() { case $1 in 0|1|130|137|143) return 1 ;; *) return 0 ;; esac; }

echo "reference: an uninterrupted run of $STEPS steps"
"$KV" train "$WORK/big.yaml" --set train.out_dir="$WORK/ref" > "$WORK/ref.log" 2>&1 || { cat "$WORK/ref.log"; exit 2; }
losses "$WORK/ref" > "$WORK/ref.losses"
step_s=$(grep -o 'elapsed [0-9]*s' "$WORK/ref.log" | tail -1)
echo "  $(wc -l < "$WORK/ref.losses") loss lines, $step_s for $STEPS steps"

# Resumes RUN to the end and compares it with the reference; RUN may already have finished.
resume_and_compare() {
  local run=$1 tag=$2
  if [ ! -f "$run/model.h5" ] || ! "$KV" ckpt info --no-config "$run/model.h5" > /dev/null 2>&1 || [ "$(latest_step "$run")" -lt $STEPS ]; then
    if [ "$(latest_step "$run")" -eq 0 ]; then
      bump no_checkpoint_yet
      return 0
    fi
    if ! "$KV" train --resume "$run" > "$run.resume.log" 2>&1; then
      problem "$tag: resume failed: $(tail -2 "$run.resume.log")"
      return 1
    fi
  fi
  if cmp -s <(losses "$run") "$WORK/ref.losses"; then
    bump bit_exact
  else
    problem "$tag: resumed losses differ from the uninterrupted run"
    diff <(losses "$run") "$WORK/ref.losses" | head -5
  fi
}

# ---------------------------------------------------------------- 1. random stop signals
if part 1; then
echo "1. $TRIALS runs signalled at random moments (SIGTERM, SIGINT, SIGKILL; 0-1.5 s after step 1)"
sigs=(TERM TERM INT INT KILL)
for i in $(seq 1 "$TRIALS"); do
  sig=${sigs[$(( RANDOM % 5 ))]}
  run=$WORK/sig$i
  "$KV" train "$WORK/big.yaml" --set train.out_dir="$run" > "$run.log" 2>&1 &
  pid=$!
  wait_for_file "$run/metrics.jsonl" 120
  while [ ! -s "$run/metrics.jsonl" ] && kill -0 $pid 2> /dev/null; do sleep 0.002; done
  delay=$(rand_ms 1500)
  sleep_ms "$delay"
  kill -$sig $pid 2> /dev/null
  wait $pid
  rc=$?
  bump trials
  bump "signal_$sig"
  outcome="exit $rc"
  if crashed $rc || grep -qE 'corrupted|Segmentation|double free|terminate called' "$run.log"; then
    problem "trial $i (SIG$sig at +${delay} ms): crashed, exit $rc: $(tail -1 "$run.log")"
    bump crashes
  elif [ "$sig" != KILL ]; then
    if grep -q "received: stopped after step" "$run.log" && [ $rc -eq 0 ]; then
      stopped=$(sed -n 's/.*stopped after step \([0-9]*\).*/\1/p' "$run.log")
      if [ "$(latest_step "$run")" = "$stopped" ] && latest_ok "$run"; then
        bump clean_stops
        outcome="clean stop after step $stopped"
      else
        problem "trial $i: stopped after step $stopped but the checkpoint of that step is missing or damaged"
        bump lost_checkpoints
      fi
    elif [ $rc -eq 0 ] && [ -f "$run/model.h5" ]; then
      bump finished_before_signal
      outcome="finished before the signal"
    else
      problem "trial $i (SIG$sig): exit $rc without a clean stop: $(tail -1 "$run.log")"
    fi
  else
    if [ "$(latest_step "$run")" -gt 0 ] && ! latest_ok "$run"; then
      problem "trial $i: SIGKILL left a damaged latest checkpoint"
      bump lost_checkpoints
    else
      bump killed
      outcome="killed (exit $rc), latest checkpoint step $(latest_step "$run")"
    fi
  fi
  resume_and_compare "$run" "trial $i"
  echo "  trial $i: SIG$sig at +${delay} ms: $outcome"
  rm -rf "$run"
done
fi

# ---------------------------------------------------------------- 2. repeated stop signals
if part 2; then
echo "2. 5 runs sent SIGTERM twice, 5 ms apart (as GNU timeout does)"
for i in 1 2 3 4 5; do
  run=$WORK/twice$i
  "$KV" train "$WORK/big.yaml" --set train.out_dir="$run" > "$run.log" 2>&1 &
  pid=$!
  wait_for_file "$run/metrics.jsonl" 120
  sleep_ms "$(rand_ms 800)"
  kill -TERM $pid; sleep 0.005; kill -TERM $pid 2> /dev/null
  wait $pid
  rc=$?
  bump trials
  if [ $rc -eq 0 ] && { grep -q "received: stopped after step" "$run.log" || [ -f "$run/model.h5" ]; } && latest_ok "$run"; then
    bump clean_stops
    echo "  twice $i: exit 0, checkpoint step $(latest_step "$run")"
  else
    problem "twice $i: exit $rc: $(tail -1 "$run.log")"
  fi
  resume_and_compare "$run" "twice $i"
  rm -rf "$run"
done
fi

# ---------------------------------------------------------------- 3. kills during checkpoint writes
if part 3; then
echo "3. SIGKILL while a checkpoint (8 runs) or the final model.h5 (3 runs) is being written"
for i in $(seq 1 11); do
  run=$WORK/ckptkill$i
  mkdir -p "$run"
  if [ $i -le 8 ]; then
    target="$run/checkpoints/step_*.h5.tmp"
    "$KV" train "$WORK/big.yaml" --set train.out_dir="$run" --set train.checkpoint.interval=1 > "$run.log" 2>&1 &
    pid=$!
    # Let a few checkpoints pass first, at random.
    k=$(( 1 + RANDOM % 4 ))
    deadline=$(( SECONDS + 120 ))
    while [ "$(latest_step "$run")" -lt $k ] && [ $SECONDS -lt $deadline ]; do sleep 0.01; done
  else
    target="$run/model.h5.tmp"
    "$KV" train "$WORK/big.yaml" --set train.out_dir="$run" > "$run.log" 2>&1 &
    pid=$!
  fi
  wait_for_file "$target" 120
  kill -KILL $pid 2> /dev/null
  wait $pid 2> /dev/null
  bump trials
  bump ckpt_write_kills
  if compgen -G "$target" > /dev/null; then bump killed_mid_write; mid=" (mid-write: a partial .tmp was left)"; else mid=""; fi
  if [ "$(latest_step "$run")" -gt 0 ] && ! latest_ok "$run"; then
    problem "ckpt kill $i: the latest checkpoint is damaged"
    bump lost_checkpoints
  fi
  echo "  kill $i: latest checkpoint step $(latest_step "$run")$mid"
  resume_and_compare "$run" "ckpt kill $i"
  [ $i -gt 8 ] && { [ -f "$run/model.h5" ] || problem "ckpt kill $i: resume did not write model.h5"; }
  rm -rf "$run"
done
fi

# ---------------------------------------------------------------- 4. file size limit
if part 4; then
echo "4. a file size limit (ulimit -f) below a checkpoint's size, 3 runs"
for i in 1 2 3; do
  run=$WORK/fsize$i
  "$KV" train "$WORK/big.yaml" --set train.out_dir="$run" > "$run.log" 2>&1 &
  pid=$!
  wait_for_file "$run/checkpoints/step_00000002.h5" 120
  sleep_ms "$(rand_ms 600)"
  kill -KILL $pid; wait $pid 2> /dev/null
  before=$(latest_step "$run")
  # 4 MiB: the logs and model.h5 fit, a checkpoint with its AdamW moments does not.
  ( ulimit -f 4096; exec "$KV" train --resume "$run" ) > "$run.limit.log" 2>&1
  rc=$?
  bump trials
  if [ $rc -eq 1 ] && grep -q "File too large" "$run.limit.log" && [ "$(latest_step "$run")" = "$before" ] && latest_ok "$run"; then
    bump clean_errors
    echo "  fsize $i: exit 1 'File too large', checkpoint step $before kept"
  else
    problem "fsize $i: exit $rc: $(tail -1 "$run.limit.log")"
  fi
  resume_and_compare "$run" "fsize $i"
  rm -rf "$run"
done
fi

# ---------------------------------------------------------------- 5. full disk
if part 5; then
echo "5. a full disk (a 12 MiB tmpfs: room for one checkpoint, not two), 3 runs"
mnt=$WORK/mnt
mkdir -p "$mnt"
if mount -t tmpfs -o size=12m tmpfs "$mnt" 2> /dev/null; then
  for i in 1 2 3; do
    run=$mnt/full$i
    "$KV" train "$WORK/big.yaml" --set train.out_dir="$run" > "$WORK/full$i.log" 2>&1
    rc=$?
    bump trials
    if [ $rc -eq 1 ] && grep -qE "No space left|disk full" "$WORK/full$i.log" && latest_ok "$run"; then
      bump clean_errors
      echo "  full $i: exit 1 ($(grep -o 'No space left on device' "$WORK/full$i.log" | head -1)), checkpoint step $(latest_step "$run") kept"
    else
      problem "full $i: exit $rc: $(tail -1 "$WORK/full$i.log")"
    fi
    cp -a "$run" "$WORK/full$i"
    rm -rf "$run"
    resume_and_compare "$WORK/full$i" "full $i"
    rm -rf "$WORK/full$i"
  done
  umount "$mnt"
else
  echo "  skipped: cannot mount a tmpfs (needs root)"
fi
fi

# ---------------------------------------------------------------- 6. MPI: frozen, killed, signalled ranks
if part 6; then
if command -v mpirun > /dev/null; then
  echo "6. under mpirun -np 2 (small model): a frozen rank (3), SIGTERM to one rank (3), SIGTERM to mpirun (3)"
  ranks_of() { ps -o pid= --ppid "$1" | tr -d ' '; }
  for kind in stop stop stop term term term mpirun mpirun mpirun; do
    run=$WORK/mpi_$kind$RANDOM
    setsid mpirun -np 2 --oversubscribe "$KV" train "$WORK/small.yaml" --set train.out_dir="$run" \
      --set train.collective_timeout_s=5 > "$run.log" 2>&1 &
    mp=$!
    wait_for_file "$run/checkpoints/latest" 120
    sleep_ms "$(rand_ms 1000)"
    victim=$(ranks_of $mp | tail -1)
    t0=$(date +%s%N)
    case $kind in
      stop) kill -STOP "$victim" ;;
      term) kill -TERM "$victim" ;;
      mpirun) kill -TERM $mp ;;
    esac
    wait $mp
    rc=$?
    took=$(( ($(date +%s%N) - t0) / 1000000 ))
    kill -KILL "$victim" 2> /dev/null
    bump trials
    bump "mpi_$kind"
    if grep -qE 'corrupted|Segmentation|double free|terminate called' "$run.log"; then
      problem "mpi $kind: a rank crashed: $(grep -E 'corrupted|Segmentation' "$run.log" | head -1)"
      bump crashes
    elif ! latest_ok "$run"; then
      problem "mpi $kind: the latest checkpoint is damaged"
      bump lost_checkpoints
    elif [ $kind = stop ]; then
      if [ $rc -ne 0 ] && grep -q "train.collective_timeout_s" "$run.log"; then
        bump clean_errors
        echo "  frozen rank: the job ended after $took ms (timeout 5 s), exit $rc, checkpoint step $(latest_step "$run") kept"
      else
        problem "mpi stop: exit $rc after $took ms without the watchdog message"
      fi
    else
      # Rank 0's own train.log: mpirun, once signalled itself, may cut the ranks' output short.
      stopped=$(sed -n 's/.*stopped after step \([0-9]*\).*/\1/p' "$run/train.log" | tail -1)
      if [ -n "$stopped" ] && [ "$(latest_step "$run")" = "$stopped" ]; then
        bump clean_stops
        echo "  SIGTERM to $kind: clean stop after step $stopped (checkpoint of that step) in $took ms, exit $rc"
      else
        bump ended_by_launcher
        echo "  SIGTERM to $kind: exit $rc in $took ms, checkpoint step $(latest_step "$run") intact"
      fi
    fi
    rm -rf "$run"
  done
else
  echo "6. skipped: no mpirun"
fi
fi

# ---------------------------------------------------------------- summary
echo
echo "summary (seed $SEED):"
for k in trials signal_TERM signal_INT signal_KILL clean_stops finished_before_signal killed ckpt_write_kills \
         killed_mid_write clean_errors mpi_stop mpi_term mpi_mpirun ended_by_launcher no_checkpoint_yet bit_exact \
         crashes lost_checkpoints problems; do
  printf '  %-24s %s\n' "$k" "${count[$k]:-0}"
done
[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
[ $problems -eq 0 ]
