#!/usr/bin/env bash
# Submits the ctclip Slurm jobs with the site's settings (slurm/site.example.sh), so that nobody
# has to remember the partition/account/GPU flags, and wires the preprocessing array to its merge.
#
#   slurm/submit.sh preprocess --shards N [--tasks LIST] [--merge-job ID] [sbatch options]
#                   -- --input COHORT --out OUT/cache.h5 [ctclip preprocess flags]
#   slurm/submit.sh train  [sbatch options, e.g. --nodes=4] -- [--launcher deepspeed] -- --config train/stage2-evidence
#   slurm/submit.sh label  [sbatch options] -- [--base-url URL | --server-cmd CMD] -- --reports R --out-dir D
#   slurm/submit.sh bench  [sbatch options] -- [--perf] -- BENCH ARGS
#
# preprocess: submits the array (tasks 0..N-1, or only --tasks, e.g. 2,5, to rerun failed ones) and
# a merge job that waits for it (afterok). With --merge-job ID the pending merge of the first
# submission is re-pointed at the rerun instead of submitting a new one.
# Prints the job id(s) on stdout: "ARRAY_ID MERGE_ID" for preprocess, one id otherwise.
# Site config: $CTCLIP_SITE, else slurm/site.sh when present, else built-in defaults. Jobs run with
# --export=NONE: they build their environment from the site config, not from this shell.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() {
  echo "submit.sh: $*" >&2
  exit 2
}
usage() {
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[ $# -gt 0 ] || usage
kind=$1
shift
case $kind in
preprocess | train | label | bench) ;;
-h | --help) usage ;;
*) die "the job kind must be preprocess, train, label or bench, not '$kind'" ;;
esac

site=${CTCLIP_SITE:-}
if [ -z "$site" ] && [ -f "$here/site.sh" ]; then site=$here/site.sh; fi
if [ -n "$site" ]; then
  [ -f "$site" ] || die "site config $site does not exist (CTCLIP_SITE)"
  site=$(cd "$(dirname "$site")" && pwd)/$(basename "$site")
  # shellcheck disable=SC1090
  source "$site"
fi

# helper options (preprocess), then sbatch options, then -- and the script's own arguments
shards='' tasks='' merge_job='' sbatch_user=()
while [ $# -gt 0 ]; do
  case $1 in
  --shards) shards=$2 && shift 2 ;;
  --tasks) tasks=$2 && shift 2 ;;
  --merge-job) merge_job=$2 && shift 2 ;;
  --) shift && break ;;
  *) sbatch_user+=("$1") && shift ;;
  esac
done
script_args=("$@")

gpus=${CTCLIP_GPUS_PER_NODE:-0}
declare -A times=([preprocess]=${CTCLIP_TIME_PREPROCESS:-} [train]=${CTCLIP_TIME_TRAIN:-}
  [label]=${CTCLIP_TIME_LABEL:-} [bench]=${CTCLIP_TIME_BENCH:-} [merge]=${CTCLIP_TIME_PREPROCESS:-})
common=(--parsable --export="NONE${site:+,CTCLIP_SITE=$site}")
[ -z "${CTCLIP_PARTITION:-}" ] || common+=(--partition="$CTCLIP_PARTITION")
[ -z "${CTCLIP_ACCOUNT:-}" ] || common+=(--account="$CTCLIP_ACCOUNT")
[ -z "${CTCLIP_QOS:-}" ] || common+=(--qos="$CTCLIP_QOS")
[ -z "${CTCLIP_MEM:-}" ] || common+=(--mem="$CTCLIP_MEM")
[ -z "${CTCLIP_CPUS_PER_TASK:-}" ] || common+=(--cpus-per-task="$CTCLIP_CPUS_PER_TASK")
# shellcheck disable=SC2206
[ -z "${CTCLIP_SBATCH_ARGS:-}" ] || common+=($CTCLIP_SBATCH_ARGS)

# sbatch_for KIND: the flags for one job kind; the user's own sbatch options come last and win
sbatch_for() {
  local flags=("${common[@]}")
  [ -z "${times[$1]}" ] || flags+=(--time="${times[$1]}")
  if [ "$gpus" -gt 0 ] && [ "$1" != preprocess ] && [ "$1" != merge ]; then flags+=(--gpus-per-node="$gpus"); fi
  if [ -n "${CTCLIP_LOG_DIR:-}" ]; then
    mkdir -p "$CTCLIP_LOG_DIR"
    if [ "$1" = preprocess ]; then flags+=(--output="$CTCLIP_LOG_DIR/slurm-%x-%A_%a.out"); else flags+=(--output="$CTCLIP_LOG_DIR/slurm-%x-%j.out"); fi
  fi
  printf '%s\n' "${flags[@]}" "${sbatch_user[@]}"
}

submit() { # submit KIND SCRIPT [args...]: prints the job id
  local kind=$1 script=$2 flags
  shift 2
  mapfile -t flags < <(sbatch_for "$kind")
  local id
  id=$(sbatch "${flags[@]}" "$here/$script" "$@") || die "sbatch refused the $kind job (flags: ${flags[*]})"
  echo "${id%%;*}"
}

case $kind in
preprocess)
  [[ $shards =~ ^[1-9][0-9]*$ ]] || die "preprocess needs --shards N (a positive integer), not '${shards}'"
  out=
  for ((i = 0; i < ${#script_args[@]}; i++)); do
    [ "${script_args[$i]}" != --out ] || out=${script_args[$((i + 1))]:-}
  done
  [ -n "$out" ] || die "the ctclip preprocess arguments after -- must include --out OUT/cache.h5"
  out=$(cd "$(dirname "$out")" 2>/dev/null && pwd)/$(basename "$out") ||
    die "the folder of --out $out does not exist"
  array=${tasks:-0-$((shards - 1))}
  array_id=$(sbatch_user+=(--array="$array") && submit preprocess preprocess_array.sbatch --shards "$shards" -- "${script_args[@]}")
  echo "submitted preprocess array $array_id (tasks $array of $shards shards)" >&2
  if [ -n "$merge_job" ]; then
    scontrol update JobId="$merge_job" Dependency="afterok:$array_id" ||
      die "could not re-point merge job $merge_job at $array_id (is it still pending?)"
    merge_id=$merge_job
    echo "merge job $merge_id now waits for $array_id" >&2
  else
    merge_id=$(sbatch_user+=(--dependency="afterok:$array_id") && submit merge preprocess_merge.sbatch --shards "$shards" --out "$out")
    echo "submitted merge $merge_id (runs when every task of $array_id succeeded)" >&2
  fi
  echo "$array_id $merge_id"
  ;;
train) submit train train_multinode.sbatch "${script_args[@]}" ;;
label) submit label label.sbatch "${script_args[@]}" ;;
bench) submit bench bench.sbatch "${script_args[@]}" ;;
esac
