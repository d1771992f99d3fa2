#!/usr/bin/env bash
# The shared-GPU check on a real machine with NVIDIA GPUs and PyTorch (SPEC G7). Nothing in the test
# suite needs it; run it once where a GPU is at hand, from the repository root:
#
#   bash scripts/gpu-check.sh            # needs nvidia-smi, python3 with torch (CUDA), and PyYAML
#
# It runs three real sweeps through mlrunner with `gpu:` and checks:
#   1. every job sees the physical GPU it was given: torch's device UUID equals nvidia-smi's UUID for
#      the index in CUDA_VISIBLE_DEVICES (CUDA_DEVICE_ORDER=PCI_BUS_ID, R1);
#   2. small jobs are packed by memory: more jobs than GPUs run at once, and never more than fit;
#   3. a job that declares less memory than it takes hits a real CUDA out-of-memory error next to
#      another job, is requeued larger (`OOM` on the console) and finishes;
#   4. where docker or podman can start a CUDA image already present, it also records what
#      nvidia-smi prints inside a container (nothing depends on this step).
# It saves the real nvidia-smi outputs it used as golden files under tests/data/nvidia-smi/real-*
# and prints the figures; commit both. Exit status 0 when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
golden=$repo/tests/data/nvidia-smi
work=$(mktemp -d /tmp/mlrunner-gpu-check.XXXXXX)
export PYTHONPATH=$repo MLRUNNER_LOCK_DIR=$work/locks
python3 -c 'import torch, yaml, sys; sys.exit(not torch.cuda.is_available())' \
  || { echo "gpu-check: needs python3 with PyTorch and CUDA, and PyYAML" >&2; exit 2; }

echo "== golden nvidia-smi outputs -> $golden/real-*"
nvidia-smi -L > "$golden/real-list.txt"
nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,memory.free,utilization.gpu --format=csv \
  > "$golden/real-query.csv"
nvidia-smi --query-gpu=index,uuid,memory.total,memory.used --format=csv,noheader,nounits > "$golden/real-poll-gpus.csv"
nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,memory.free,utilization.gpu \
  --format=csv,noheader,nounits > "$golden/real-query-noheader-nounits.csv"
total_mib=$(head -n 1 "$golden/real-poll-gpus.csv" | cut -d, -f3 | tr -d ' ')
gpus=$(wc -l < "$golden/real-poll-gpus.csv")
echo "$gpus GPU(s), $total_mib MiB each (first)"

# A CUDA job: takes MIB of device memory, records its device UUID and the time, holds it for SECONDS.
cat > "$work/job.py" <<'EOF'
import json, os, sys, time, torch
mib, seconds = int(sys.argv[1]), float(sys.argv[2])
uuid = str(torch.cuda.get_device_properties(0).uuid)
start = time.time()
block = torch.empty(mib * 2**20, dtype=torch.uint8, device="cuda")
block.fill_(1)
torch.cuda.synchronize()
with open(os.environ["JOB_RECORD"], "a") as out:
    out.write(json.dumps({"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "uuid": uuid, "mib": mib,
                          "start": start, "allocated": time.time()}) + "\n")
time.sleep(seconds)
with open(os.environ["JOB_RECORD"], "a") as out:
    out.write(json.dumps({"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "end": time.time()}) + "\n")
EOF
nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits > "$golden/real-apps-idle.csv"

echo "== 1+2: UUIDs and packing: 4 jobs of 10% per GPU, per_gpu 4"
small=$((total_mib / 10))
mkdir -p "$work/pack"
python3 - "$work/pack/params.yaml" "$small" "$gpus" <<'EOF'
import sys, yaml
path, small, gpus = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = {"template": {"job": "python3 {script} {mib} 8"}, "resource": "auto",
          "gpu": {"memory": f"{int(small * 1.2)}MiB", "per_gpu": 4}}
yaml.safe_dump_all([config, {"script": sys.argv[1].replace("pack/params.yaml", "job.py"), "mib": small,
                             "i": list(range(4 * gpus))}], open(path, "w"), sort_keys=False)
EOF
(cd "$work/pack" && JOB_RECORD=$work/pack/jobs.jsonl python3 -m mlrunner) | tail -n 3
nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits > "$golden/real-apps-after.csv" || true
python3 - "$work/pack/jobs.jsonl" "$golden/real-poll-gpus.csv" "$gpus" <<'EOF'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
uuids = {line.split(",")[0].strip(): line.split(",")[1].strip() for line in open(sys.argv[2])}
starts = [r for r in records if "uuid" in r]
wrong = [r for r in starts if uuids[r["visible"]].removeprefix("GPU-") != r["uuid"].removeprefix("GPU-")]
print(f"UUID check: {len(starts)} jobs, {len(wrong)} on a GPU other than the one they were given")
events = sorted([(r["allocated"], 1) for r in starts] + [(r["end"], -1) for r in records if "end" in r])
running = peak = 0
for _, step in events:
    running += step
    peak = max(peak, running)
print(f"packing: at most {peak} jobs at once on {sys.argv[3]} GPU(s) (one job per GPU would be {sys.argv[3]})")
sys.exit(1 if wrong or peak <= int(sys.argv[3]) else 0)
EOF

echo "== 3: a real out-of-memory error is requeued larger and finishes"
mkdir -p "$work/oom"
python3 - "$work/oom/params.yaml" "$total_mib" <<'EOF'
import sys, yaml
path, total = sys.argv[1], int(sys.argv[2])
script = path.replace("oom/params.yaml", "job.py")
config = {"template": {"job": "python3 {script} {mib} {seconds}"}, "resource": [0],
          "gpu": {"memory": "{size}", "busy_above": f"{total}MiB"}}
holder = {"script": script, "name": "holder", "mib": total // 2, "seconds": 40, "size": f"{total // 2}MiB"}
greedy = {"script": script, "name": "greedy", "mib": total * 6 // 10, "seconds": 1, "size": f"{total * 3 // 10}MiB"}
yaml.safe_dump_all([config, holder, greedy], open(path, "w"), sort_keys=False)
EOF
(cd "$work/oom" && JOB_RECORD=$work/oom/jobs.jsonl python3 -m mlrunner) | tee "$work/oom/console.txt" | grep -E "OOM|DONE|FAIL|Finished"
grep -q "^OOM " "$work/oom/console.txt" && grep -q "Finished: 2, failed: 0" "$work/oom/console.txt" \
  && echo "OOM check: requeued and finished" || { echo "OOM check FAILED"; exit 1; }
echo "== 4 (optional, never fails the check): nvidia-smi seen from inside a container (G8)"
# With a job of ours holding memory on GPU 0, record what nvidia-smi prints inside a container: the
# processes it lists are the host's, under pids the container's /proc does not show (or none at
# all). Uses docker or podman with an image already here whose name has "cuda" in it (no pull).
container_check() {
  local engine image gpus
  for engine in docker podman; do
    command -v "$engine" > /dev/null || continue
    image=$("$engine" images --format '{{.Repository}}:{{.Tag}}' 2> /dev/null | grep -i cuda | head -n 1) || true
    [ -n "$image" ] || { echo "$engine: no CUDA image here; skipped"; continue; }
    gpus=(--gpus all)
    [ "$engine" = podman ] && gpus=(--device nvidia.com/gpu=all)
    CUDA_VISIBLE_DEVICES=0 JOB_RECORD=$work/container-job.jsonl python3 "$work/job.py" 1024 30 &
    local holder=$!
    sleep 10
    echo "host pid of our job holding 1 GiB: $holder" > "$golden/real-container-notes.txt"
    timeout 120 "$engine" run --rm "${gpus[@]}" "$image" sh -c \
      'nvidia-smi --query-gpu=index,uuid,memory.total,memory.used --format=csv,noheader,nounits;
       echo ---; nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits;
       echo ---; echo "pids in this /proc: $(ls /proc | grep -c "^[0-9]")"' \
      > "$golden/real-container-$engine.txt" 2>&1 \
      && echo "recorded $golden/real-container-$engine.txt" || echo "$engine run failed; see $golden/real-container-$engine.txt"
    kill "$holder" 2> /dev/null || true
    wait "$holder" 2> /dev/null || true
    return 0
  done
  echo "no docker or podman that can start a CUDA container here: skipped"
}
container_check || true

echo "gpu-check: all checks passed; commit $golden/real-* and the figures above"
