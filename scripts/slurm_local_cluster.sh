#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (munged + slurmctld + slurmd), to test the sweeps' SLURM path
# (tests/test_sweep_slurm.py) without a real cluster. Needs root and Debian's packages:
#     apt-get install slurm-wlm munge
#     bash scripts/slurm_local_cluster.sh start [DIR]     # DIR default /tmp/slurm-local; prints the export below
#     export SLURM_CONF=DIR/slurm.conf                    # sbatch, sinfo, squeue and the test read it
#     bash scripts/slurm_local_cluster.sh stop [DIR]      # stops the daemons this script started
# Everything (config, state, logs, pid files) lives in DIR; nothing under /etc is changed. One partition,
# "debug", holds the node with all its cores and memory; no accounting (sacct is not needed by submitit when a
# job ends normally), no cgroups (proctrack/linuxproc, task/none).
set -euo pipefail

CMD=${1:-}
DIR=${2:-/tmp/slurm-local}

die() { echo "slurm_local_cluster.sh: error: $*" >&2; exit 2; }

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
    cat > "$DIR/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=30
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if [ -S /run/munge/munge.socket.2 ] && munge -n >/dev/null 2>&1; then
        return  # a munged is running already; use it
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged --pid-file /run/munge/munged.pid
    cp /run/munge/munged.pid "$DIR/munged.pid"  # stop ends only a munged this script started
}

start() {
    [ "$(id -u)" = 0 ] || die "run as root (slurmd runs jobs as their users)"
    command -v slurmctld >/dev/null && command -v munged >/dev/null || die "install: apt-get install slurm-wlm munge"
    mkdir -p "$DIR/state" "$DIR/spool"
    write_conf
    export SLURM_CONF=$DIR/slurm.conf
    start_munge
    slurmctld
    slurmd
    for _ in $(seq 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
            sinfo
            echo "export SLURM_CONF=$DIR/slurm.conf"
            return
        fi
        sleep 1
    done
    die "the node did not come up; see $DIR/slurmctld.log and $DIR/slurmd.log"
}

stop() {
    local name pid
    for name in slurmd slurmctld munged; do
        [ -f "$DIR/$name.pid" ] || continue
        pid=$(cat "$DIR/$name.pid")
        kill "$pid" 2>/dev/null && echo "stopped $name ($pid)" || true
        rm -f "$DIR/$name.pid"
    done
}

case "$CMD" in
    start) start ;;
    stop) stop ;;
    *) die "usage: bash $0 start|stop [DIR]" ;;
esac
