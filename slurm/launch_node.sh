#!/usr/bin/env bash
# One task per node (started by `srun` in train_multinode.sbatch): starts this node's worker
# processes with torchrun (c10d rendezvous) or DeepSpeed's per-node launcher, and relays signals.
#
#   launch_node.sh torchrun|deepspeed PROCS_PER_NODE MASTER_ADDR PORT MODULE -- args...
#   (runs `python -m MODULE args` in every worker; MODULE is ctclip.cli for `ctclip train`)
#
# Signals: the workers start with USR1 *ignored* (an ignored signal survives exec), so a warning that
# arrives before the trainer has installed its handler is dropped instead of killing the worker; the
# batch shell re-sends it until the step exits. USR1 goes straight to the workers (the children of
# the launcher: torchrun puts them in their own sessions, so a process-group signal misses them).
# TERM goes to the launcher, which both launchers pass on to their workers.
set -euo pipefail

launcher=$1 nproc=$2 master_addr=$3 port=$4 module=$5
shift 5
[ "${1:-}" = -- ] && shift
python=${CTCLIP_PYTHON:-python}

case $launcher in
torchrun)
  cmd=("$python" -m torch.distributed.run
    --nnodes="$SLURM_NNODES" --nproc-per-node="$nproc"
    --rdzv-backend=c10d --rdzv-endpoint="$master_addr:$port" --rdzv-id="$SLURM_JOB_ID"
    --max-restarts=0 -m "$module" "$@")
  ;;
deepspeed)
  # DeepSpeed's multi-node runner needs pdsh/ssh; its per-node launcher needs neither: it takes the
  # world layout (host -> local slots, in Slurm's node order) and this node's rank.
  world_info=$("$python" - "$nproc" <<'EOF'
import base64, json, subprocess, os, sys
hosts = subprocess.run(['scontrol', 'show', 'hostnames', os.environ['SLURM_JOB_NODELIST']],
                       check=True, capture_output=True, text=True).stdout.split()
info = {host: list(range(int(sys.argv[1]))) for host in hosts}
print(base64.urlsafe_b64encode(json.dumps(info).encode()).decode())
EOF
)
  cmd=("$python" -u -m deepspeed.launcher.launch --world_info="$world_info" --node_rank="$SLURM_NODEID"
    --master_addr="$master_addr" --master_port="$port" --module --no_local_rank "$module" "$@")
  ;;
*)
  echo "launch_node.sh: launcher must be torchrun or deepspeed, not '$launcher'" >&2
  exit 2
  ;;
esac

echo "[launch_node $(hostname)] node $SLURM_NODEID/$SLURM_NNODES: ${cmd[*]}" >&2
(
  trap '' USR1
  exec "${cmd[@]}"
) &
pid=$!
trap 'pkill -USR1 -P "$pid" || true' USR1
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM
while true; do
  rc=0
  wait "$pid" || rc=$?
  kill -0 "$pid" 2>/dev/null || exit "$rc"
done
