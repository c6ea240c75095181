# shellcheck shell=bash
# Site config for the ctclip Slurm scripts. Copy to slurm/site.sh (picked up automatically) or
# anywhere and point CTCLIP_SITE at it. It is plain bash, sourced twice:
#   - by slurm/submit.sh on the login node, to build the sbatch flags (CTCLIP_SBATCH_* below);
#   - by every job (slurm/common.sh) on the compute nodes, to build the environment.
# A variable already set in the environment wins over this file, so a one-off change is
# `CTCLIP_PARTITION=debug slurm/submit.sh ...`. Every value below is the built-in default unless
# marked "example".

# ---- scheduler: turned into sbatch flags by slurm/submit.sh ----
CTCLIP_PARTITION=${CTCLIP_PARTITION:-}          # -p; example: gpu
CTCLIP_ACCOUNT=${CTCLIP_ACCOUNT:-}              # -A; example: rad-ai
CTCLIP_QOS=${CTCLIP_QOS:-}                      # --qos
CTCLIP_GPUS_PER_NODE=${CTCLIP_GPUS_PER_NODE:-0} # --gpus-per-node for train/label/bench, and worker
                                                # processes per node in training (0 = CPU nodes, 1 process)
CTCLIP_CPUS_PER_TASK=${CTCLIP_CPUS_PER_TASK:-}  # --cpus-per-task for every job; example: 16
CTCLIP_MEM=${CTCLIP_MEM:-}                      # --mem per node; example: 200G
# Time limits per job kind (sbatch --time). Training requeues itself before its limit, so a
# short limit that the scheduler backfills well is fine.
CTCLIP_TIME_PREPROCESS=${CTCLIP_TIME_PREPROCESS:-04:00:00}
CTCLIP_TIME_LABEL=${CTCLIP_TIME_LABEL:-12:00:00}
CTCLIP_TIME_TRAIN=${CTCLIP_TIME_TRAIN:-24:00:00}
CTCLIP_TIME_BENCH=${CTCLIP_TIME_BENCH:-02:00:00}
# Anything else your site needs on every sbatch, as one string; example: '--constraint=a100 --exclusive'
CTCLIP_SBATCH_ARGS=${CTCLIP_SBATCH_ARGS:-}
# Where the slurm-*.out logs go (default: the folder you submit from); example: $HOME/ctclip-logs
CTCLIP_LOG_DIR=${CTCLIP_LOG_DIR:-}

# ---- environment inside the jobs: used by slurm/common.sh ----
# Environment modules to load, space-separated; example: 'cuda/12.4 gcc/12.3'
CTCLIP_MODULES=${CTCLIP_MODULES:-}
# The Python environment with ctclip installed (default: the checkout's .venv, from `make install`).
# Must be on a filesystem that every node sees.
CTCLIP_VENV=${CTCLIP_VENV:-}
# Or a container image that has ctclip installed: every command then runs in
# `$CTCLIP_CONTAINER_RUNTIME exec --bind <checkout>,<binds> [--nv] IMAGE ...` and CTCLIP_VENV is unused.
CTCLIP_CONTAINER=${CTCLIP_CONTAINER:-}          # example: /shared/images/ctclip.sif
CTCLIP_CONTAINER_RUNTIME=${CTCLIP_CONTAINER_RUNTIME:-apptainer} # or singularity
CTCLIP_CONTAINER_BINDS=${CTCLIP_CONTAINER_BINDS:-} # example: /data,/scratch
# Shell code run after modules and venv, e.g. for NCCL settings or a scratch folder; example:
# CTCLIP_ENV_SETUP='export NCCL_SOCKET_IFNAME=ib0; export TMPDIR=/scratch/$USER'
CTCLIP_ENV_SETUP=${CTCLIP_ENV_SETUP:-}

# ---- job behaviour ----
CTCLIP_LAUNCHER=${CTCLIP_LAUNCHER:-torchrun}    # training launcher: torchrun (c10d) or deepspeed
CTCLIP_PORT_BASE=${CTCLIP_PORT_BASE:-15000}     # ports are CTCLIP_PORT_BASE + (job id % 5000) * 3 + k
# After the time-limit warning, USR1 is re-sent this often until the workers have stopped (a worker
# still starting up ignores it)
CTCLIP_RESIGNAL_S=${CTCLIP_RESIGNAL_S:-10}
# The OpenAI-compatible server that label.sbatch starts on its node when no --base-url is given.
# {port} and {host} are filled in; the server must answer GET http://{host}:{port}/v1/models.
# example: 'vllm serve Qwen/Qwen2.5-7B-Instruct --host {host} --port {port} --served-model-name local'
CTCLIP_LLM_SERVER_CMD=${CTCLIP_LLM_SERVER_CMD:-}
CTCLIP_LLM_READY_TIMEOUT=${CTCLIP_LLM_READY_TIMEOUT:-900} # seconds to wait for the server to load
