# shellcheck shell=bash
# Sourced by every slurm/*.sbatch script, inside the job: finds the checkout, reads the site
# config, sets up modules / venv / container, and gives the scripts a few helpers.
#
# Why this file exists: Slurm runs a *copy* of the batch script from its spool folder, and under
# `--export=NONE` (the submit helper's default, and many sites' policy) the job starts from a clean
# environment in which `srun` steps do not even get a PATH. So each job must build its own
# environment from files, the same way on every node and after every requeue.

set -euo pipefail

# (printf's own clock: no `date` child that the job's teardown could kill mid-message)
ctclip_log() { TZ=UTC printf '[ctclip-slurm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
ctclip_die() {
  ctclip_log "error: $*"
  exit 2
}

: "${CTCLIP_SLURM_DIR:?set by the sbatch script before sourcing common.sh}"
CTCLIP_ROOT=${CTCLIP_ROOT:-$(cd "$CTCLIP_SLURM_DIR/.." && pwd)}
export CTCLIP_ROOT CTCLIP_SLURM_DIR

# ---- site config: built-in defaults < site file < variables already set in the environment ----
_ctclip_defaults() {
  : "${CTCLIP_VENV:=$CTCLIP_ROOT/.venv}"
  : "${CTCLIP_MODULES:=}"
  : "${CTCLIP_CONTAINER:=}"
  : "${CTCLIP_CONTAINER_RUNTIME:=apptainer}"
  : "${CTCLIP_CONTAINER_BINDS:=}"
  : "${CTCLIP_GPUS_PER_NODE:=0}"
  : "${CTCLIP_PORT_BASE:=15000}"
  : "${CTCLIP_LAUNCHER:=torchrun}"
  : "${CTCLIP_LLM_SERVER_CMD:=}"
  : "${CTCLIP_LLM_READY_TIMEOUT:=900}"
  : "${CTCLIP_ENV_SETUP:=}"
  : "${CTCLIP_RESIGNAL_S:=10}"
}

ctclip_load_site() {
  local site=${CTCLIP_SITE:-}
  if [ -z "$site" ] && [ -f "$CTCLIP_SLURM_DIR/site.sh" ]; then site=$CTCLIP_SLURM_DIR/site.sh; fi
  if [ -n "$site" ]; then
    [ -f "$site" ] || ctclip_die "site config $site does not exist (CTCLIP_SITE)"
    # Variables set in the environment win over the file, so `--export=...,CTCLIP_X=...` works.
    local saved
    # (declare -p inside a function would re-declare them as locals: make them global again)
    # shellcheck disable=SC2046
    saved=$(declare -p $(compgen -v CTCLIP_) 2>/dev/null |
      sed -e 's/^declare -- /declare -g /' -e 's/^declare -\([a-zA-Z]*\) /declare -g\1 /' || true)
    # shellcheck disable=SC1090
    source "$site"
    eval "$saved"
    CTCLIP_SITE=$site
    export CTCLIP_SITE
  fi
  _ctclip_defaults
}

_ctclip_modules() {
  [ -n "$CTCLIP_MODULES" ] || return 0
  if ! type module >/dev/null 2>&1; then
    local init
    for init in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh /usr/share/lmod/lmod/init/bash; do
      # shellcheck disable=SC1090
      if [ -f "$init" ]; then set +u && source "$init" && set -u && break; fi
    done
  fi
  type module >/dev/null 2>&1 ||
    ctclip_die "CTCLIP_MODULES='$CTCLIP_MODULES' is set but this node has no 'module' command"
  set +u
  # shellcheck disable=SC2086
  module load $CTCLIP_MODULES || ctclip_die "module load $CTCLIP_MODULES failed"
  set -u
}

_ctclip_venv() {
  if [ -n "$CTCLIP_CONTAINER" ]; then
    [ -f "$CTCLIP_CONTAINER" ] || ctclip_die "CTCLIP_CONTAINER=$CTCLIP_CONTAINER does not exist"
    CTCLIP_PYTHON=python # the container's
    local binds=$CTCLIP_ROOT${CTCLIP_CONTAINER_BINDS:+,$CTCLIP_CONTAINER_BINDS}
    CTCLIP_EXEC=("$CTCLIP_CONTAINER_RUNTIME" exec --bind "$binds")
    if [ "$CTCLIP_GPUS_PER_NODE" -gt 0 ]; then CTCLIP_EXEC+=(--nv); fi
    CTCLIP_EXEC+=("$CTCLIP_CONTAINER")
    return 0
  fi
  CTCLIP_EXEC=()
  [ -x "$CTCLIP_VENV/bin/python" ] ||
    ctclip_die "no Python at $CTCLIP_VENV/bin/python: set CTCLIP_VENV in the site config (slurm/site.example.sh) or run 'make install' in $CTCLIP_ROOT"
  export VIRTUAL_ENV=$CTCLIP_VENV
  # The scripts call the venv's python by its full path, so its bin/ can go LAST on PATH: tools
  # such as ninja (DeepSpeed JIT-builds its CPU ops with it) then resolve as they do outside the
  # job. The pip ninja and a system ninja keep incompatible build logs, and each would rebuild
  # (minutes) what the other built.
  export PATH=${PATH:-/usr/local/bin:/usr/bin:/bin}:$CTCLIP_VENV/bin
  CTCLIP_PYTHON=$CTCLIP_VENV/bin/python
}

# Runs a command in the job's environment (inside the container when one is configured).
ctclip_exec() { "${CTCLIP_EXEC[@]}" "$@"; }

# A port that two jobs sharing a node do not both pick: derived from the job id.
ctclip_port() {
  local offset=${1:-0}
  echo $((CTCLIP_PORT_BASE + (SLURM_JOB_ID % 5000) * 3 + offset))
}

# First host of the allocation, as every node sees it.
ctclip_master_addr() { scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1; }

ctclip_setup() {
  ctclip_load_site
  _ctclip_modules
  _ctclip_venv
  export CTCLIP_PYTHON # launch_node.sh runs in srun steps
  if [ -n "$CTCLIP_ENV_SETUP" ]; then eval "$CTCLIP_ENV_SETUP"; fi
  # Jobs never download: models and tokenizers come from the local HF cache or a model folder.
  export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
  export PYTHONUNBUFFERED=1
  # progress bars go to a log file here: one update every 30 s instead of ten a second
  export TQDM_MININTERVAL=${TQDM_MININTERVAL:-30}
  if [ "$CTCLIP_GPUS_PER_NODE" -eq 0 ]; then export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}; fi
  # Under --export=NONE srun would start steps with an empty environment: pass this one on.
  export SLURM_EXPORT_ENV=ALL
  ctclip_log "job ${SLURM_JOB_ID:-?} on $(hostname) restart=${SLURM_RESTART_COUNT:-0}" \
    "root=$CTCLIP_ROOT site=${CTCLIP_SITE:-none}" \
    "python=$CTCLIP_PYTHON${CTCLIP_CONTAINER:+ container=$CTCLIP_CONTAINER}"
}

# ---- clean-up: ctclip_on_exit FUNCTION runs it when the script exits, or before a requeue ----
# A requeue makes Slurm tear the job down (TERM, then KILL after KillWait), so clean-up left to the
# EXIT trap would race with it: ctclip_run_step runs it first, while the job is still whole.
CTCLIP_CLEANUP=()
ctclip_on_exit() {
  CTCLIP_CLEANUP+=("$1")
  trap _ctclip_cleanup EXIT
}
_ctclip_cleanup() {
  local fn
  for fn in "${CTCLIP_CLEANUP[@]}"; do "$fn" || true; done
  CTCLIP_CLEANUP=()
}

# ---- checkpoint-and-requeue on a warning signal (sbatch --signal=B:USR1@SECONDS --requeue) ----
# The batch shell gets the signal, forwards it to the running step (srun passes it to every task),
# keeps forwarding until the step has exited (a worker that has not installed its handler yet ignores
# it: slurm/launch_node.sh starts workers with USR1 ignored), then requeues the job.
# CTCLIP_STOP_SIGNAL: what the step gets (USR1 for trainers; label.sbatch uses INT).
CTCLIP_STOP_REQUESTED=0
CTCLIP_STEP_PID=
CTCLIP_STOP_SIGNAL=${CTCLIP_STOP_SIGNAL:-USR1}

_ctclip_on_usr1() {
  ctclip_log "USR1: time limit or preemption ahead; asking the step to checkpoint and exit"
  CTCLIP_STOP_REQUESTED=1
  if [ -n "$CTCLIP_STEP_PID" ]; then kill -"$CTCLIP_STOP_SIGNAL" "$CTCLIP_STEP_PID" 2>/dev/null || true; fi
}

# Installed now, not when the step starts: a warning that comes during set-up (or while an LLM server
# starts) would otherwise kill the batch shell (USR1's default action); this way it is kept, and
# ctclip_run_step requeues without starting the step.
trap _ctclip_on_usr1 USR1

_ctclip_on_term() {
  ctclip_log "TERM: job is being cancelled or preempted; forwarding to the step"
  if [ -n "$CTCLIP_STEP_PID" ]; then kill -TERM "$CTCLIP_STEP_PID" 2>/dev/null || true; fi
}

# ctclip_run_step CMD...: runs CMD (usually srun ...) in the background so the traps fire at once,
# waits for it, and requeues the job when a USR1 arrived. Returns the step's exit code.
ctclip_run_step() {
  trap _ctclip_on_term TERM
  if [ "$CTCLIP_STOP_REQUESTED" = 1 ]; then _ctclip_requeue "the warning came before the step started"; fi
  # (a plain `cmd &` would start with INT ignored, and Python then never raises KeyboardInterrupt)
  (
    trap - INT QUIT
    exec "$@"
  ) &
  CTCLIP_STEP_PID=$!
  local rc=0 waited=0
  while kill -0 "$CTCLIP_STEP_PID" 2>/dev/null; do
    if [ "$CTCLIP_STOP_REQUESTED" = 1 ]; then
      # a worker still starting up ignores USR1: re-send every CTCLIP_RESIGNAL_S s until the step is gone
      sleep 1 &
      wait $! || true
      waited=$((waited + 1))
      if [ $((waited % CTCLIP_RESIGNAL_S)) = 0 ] && kill -0 "$CTCLIP_STEP_PID" 2>/dev/null; then
        ctclip_log "step still running ${waited} s after the stop request; re-sending $CTCLIP_STOP_SIGNAL"
        kill -"$CTCLIP_STOP_SIGNAL" "$CTCLIP_STEP_PID" 2>/dev/null || true
      fi
    else
      wait "$CTCLIP_STEP_PID" || true # returns early when a trap fires
    fi
  done
  wait "$CTCLIP_STEP_PID" || rc=$?
  trap - TERM
  CTCLIP_STEP_PID=
  if [ "$CTCLIP_STOP_REQUESTED" = 1 ]; then _ctclip_requeue "step exited with $rc after the stop request"; fi
  return "$rc"
}

# Clean-up first: the requeue tears the job down at once.
_ctclip_requeue() {
  _ctclip_cleanup
  ctclip_log "$1; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID" || ctclip_die "scontrol requeue $SLURM_JOB_ID failed (was the job submitted with --requeue?)"
  exit 0
}
