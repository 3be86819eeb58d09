#!/usr/bin/env bash
# start-local-slurm.sh - an idempotent single-node Slurm on localhost, for the SLURM workflow
# tests (tests/workflow/test_slurm.py) and CI (.ci/run). Debian 12 gives Slurm 22.05.
#
# Installs (if missing) munge + slurmctld + slurmd + slurm-client from Debian,
# optionally mariadb + slurmdbd (job accounting, so `sacct` works), writes a
# minimal config that needs neither systemd nor cgroups, starts the daemons in
# the background (no systemd), waits until the node is idle and runs a smoke test.
#
# Run as root. Re-running is safe: daemons already started by this script are
# reused, missing ones are started; when the config changed (e.g. another
# SLURM_LOCAL_GPUS) slurmctld and slurmd are restarted so that the node picks it up.
#
# Environment knobs (all optional):
#   SLURM_LOCAL_BASE=/tmp/local-slurm   state, logs, pid files, mariadb datadir
#   SLURM_LOCAL_DBD=1                  1: also run mariadb + slurmdbd (sacct works; the
#                                      executor plugin polls with sacct whenever it exists)
#                                      0: accounting_storage/none (use squeue polling)
#   SLURM_LOCAL_GPUS=0                 >0: advertise N fake GPUs (gres/gpu, backed by
#                                      /dev/null-like devices) so that `--gpus=N` jobs are
#                                      scheduled and accounted; the jobs see CUDA_VISIBLE_DEVICES
#   SLURM_LOCAL_MEM_MB=<auto>          RealMemory of the node (default: total - 1024 MB)
#   SLURM_LOCAL_PARTITION=debug        name of the (default) partition
#   SLURM_LOCAL_CLEAN=0                1: wipe controller state (job ids restart at 1)
#   SLURM_LOCAL_TIMEOUT=60             seconds to wait for each daemon / the node
#
# Stop with: tests/slurm/stop-local-slurm.sh (same SLURM_LOCAL_BASE)

set -euo pipefail

BASE=${SLURM_LOCAL_BASE:-/tmp/local-slurm}
WITH_DBD=${SLURM_LOCAL_DBD:-1}
GPUS=${SLURM_LOCAL_GPUS:-0}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
CLEAN=${SLURM_LOCAL_CLEAN:-0}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
NODE=localhost
MARK="# managed-by: start-local-slurm.sh"

ETC=$BASE/etc RUN=$BASE/run LOG=$BASE/log STATE=$BASE/state DB=$BASE/mysql
STARTED=$RUN/started-by-us        # one "name pidfile" line per daemon this script started

t0=${EPOCHREALTIME/./}
log() { local us=$(( ${EPOCHREALTIME/./} - t0 )); printf '[start-local-slurm %3d.%01ds] %s\n' $((us/1000000)) $((us/100000%10)) "$*"; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# pid_alive PIDFILE COMM -> prints pid and returns 0 if PIDFILE names a live process called COMM
pid_alive() {
    local f=$1 comm=$2 p
    [ -s "$f" ] || return 1
    p=$(tr -dc '0-9' < "$f")
    [ -n "$p" ] && [ -r "/proc/$p/comm" ] && [ "$(cat "/proc/$p/comm")" = "$comm" ] || return 1
    echo "$p"
}
record() {  # record NAME PIDFILE (only daemons we started ourselves)
    grep -qs "^$1 " "$STARTED" && sed -i "/^$1 /d" "$STARTED"
    echo "$1 $2" >> "$STARTED"
}
wait_for() {  # wait_for DESCRIPTION CMD...
    local desc=$1; shift
    local end=$(( $(date +%s) + TIMEOUT ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || die "timed out after ${TIMEOUT}s waiting for $desc"
        sleep 0.2
    done
}

# ---------------------------------------------------------------- 1. packages
pkgs=()
command -v slurmctld >/dev/null || pkgs+=(slurmctld)
command -v slurmd    >/dev/null || pkgs+=(slurmd)
command -v sbatch    >/dev/null || pkgs+=(slurm-client)
command -v munged    >/dev/null || pkgs+=(munge)
if [ "$WITH_DBD" = 1 ]; then
    command -v slurmdbd >/dev/null || pkgs+=(slurmdbd)
    command -v mariadbd >/dev/null || pkgs+=(mariadb-server)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
    echo "[start-local-slurm] installing: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d in this image prevents the packages from starting services themselves
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
log "packages present: $(slurmctld -V)"

# ---------------------------------------------------------------- 2. directories
[ "$CLEAN" = 1 ] && rm -rf "$STATE"
mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/d"
touch "$STARTED"

# ---------------------------------------------------------------- 3. config
# Hardware line from slurmd -C, with our node name and a RealMemory a bit below actual.
hw=$(slurmd -C | head -1)
topo=$(echo "$hw" | grep -o 'CPUs=.*ThreadsPerCore=[0-9]*')
total_mb=$(echo "$hw" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
MEM_MB=${SLURM_LOCAL_MEM_MB:-$(( total_mb > 2048 ? total_mb - 1024 : total_mb ))}
gres_node="" gres_types=""
if [ "$GPUS" -gt 0 ]; then gres_node=" Gres=gpu:$GPUS"; gres_types="GresTypes=gpu"; fi

cat > "$ETC/slurm.conf.new" <<EOF
$MARK (base $BASE)
# Minimal single-node Slurm for CI on localhost: no systemd, no cgroups.
ClusterName=localci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# no cgroups: plain /proc based process tracking, no CPU binding/confinement
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs that request no memory must not grab the whole node (would serialize everything)
DefMemPerCPU=1000
SchedulerType=sched/backfill
ReturnToService=2
# keep finished jobs visible to squeue/scontrol for 10 min (plugin's squeue mode needs >= 3x poll interval)
MinJobAge=600
KillWait=5
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
JobCompType=jobcomp/none
EOF
if [ "$WITH_DBD" = 1 ]; then
    cat >> "$ETC/slurm.conf.new" <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
# store the job comment (the plugin puts "rule_<name>_wildcards_<...>" there) for sacct -o Comment
AccountingStoreFlags=job_comment
EOF
else
    echo "AccountingStorageType=accounting_storage/none" >> "$ETC/slurm.conf.new"
fi
if [ -n "$gres_types" ]; then
    echo "$gres_types" >> "$ETC/slurm.conf.new"
    [ "$WITH_DBD" = 1 ] && echo "AccountingStorageTRES=gres/gpu" >> "$ETC/slurm.conf.new"
fi
cat >> "$ETC/slurm.conf.new" <<EOF
NodeName=$NODE NodeAddr=127.0.0.1 $topo RealMemory=$MEM_MB$gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
mv "$ETC/slurm.conf.new" "$ETC/slurm.conf"
if [ "$GPUS" -gt 0 ]; then
    # Slurm 22.05 drops file-less GPUs ("Removing file-less GPU"), so give each fake GPU a
    # character device that behaves like /dev/null (no cgroup device confinement is active).
    mkdir -p "$BASE/dev"
    for i in $(seq 0 $((GPUS - 1))); do
        [ -c "$BASE/dev/fakegpu$i" ] || mknod "$BASE/dev/fakegpu$i" c 1 3
    done
    printf '%s\nAutoDetect=off\nNodeName=%s Name=gpu File=%s/dev/fakegpu[0-%s]\n' \
        "$MARK" "$NODE" "$BASE" "$((GPUS - 1))" > "$ETC/gres.conf"
else
    rm -f "$ETC/gres.conf"
fi

# Clients must find the config at the default path: snakemake-executor-plugin-slurm-jobstep
# strips all SLURM_* variables (SLURM_CONF included) before its nested `srun`.
mkdir -p /etc/slurm
# Did the node's config change since the daemons were started (another GPU count, memory)?
CONF_CHANGED=0
cmp -s "$ETC/slurm.conf" /etc/slurm/slurm.conf || CONF_CHANGED=1
if [ -e "$ETC/gres.conf" ]; then cmp -s "$ETC/gres.conf" /etc/slurm/gres.conf || CONF_CHANGED=1
elif [ -e /etc/slurm/gres.conf ]; then CONF_CHANGED=1; fi
install_conf() {  # install_conf SRC DEST MODE
    if [ -e "$2" ] && ! grep -qs "^$MARK" "$2"; then
        mv "$2" "$2.bak.$(date +%s)"; log "backed up foreign $2"
    fi
    install -m "$3" "$1" "$2"
}
install_conf "$ETC/slurm.conf" /etc/slurm/slurm.conf 0644
if [ -e "$ETC/gres.conf" ]; then install_conf "$ETC/gres.conf" /etc/slurm/gres.conf 0644
elif grep -qs "^$MARK" /etc/slurm/gres.conf; then rm -f /etc/slurm/gres.conf; fi

# ---------------------------------------------------------------- 4. munge
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if pid=$(pid_alive /run/munge/munged.pid munged); then
    log "munged already running (pid $pid)"
else
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    record munged /run/munge/munged.pid
    wait_for munged sh -c 'munge -n | unmunge'
    log "munged started (pid $(cat /run/munge/munged.pid))"
fi

# ---------------------------------------------------------------- 5. mariadb + slurmdbd
if [ "$WITH_DBD" = 1 ]; then
    cat > "$ETC/my.cnf" <<EOF
$MARK
[mysqld]
user=mysql
datadir=$DB
socket=$RUN/mysqld.sock
pid-file=$RUN/mysqld.pid
log-error=$LOG/mysqld.log
bind-address=127.0.0.1
port=3306
skip-name-resolve
innodb_buffer_pool_size=256M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
EOF
    chmod 0755 "$RUN" "$LOG"; chown mysql:mysql "$RUN" 2>/dev/null || true
    if [ ! -d "$DB/mysql" ]; then
        mkdir -p "$DB"; chown mysql:mysql "$DB"
        mariadb-install-db --defaults-file="$ETC/my.cnf" --user=mysql --skip-test-db >"$LOG/mysql-install.log" 2>&1 \
            || die "mariadb-install-db failed, see $LOG/mysql-install.log"
    fi
    if pid=$(pid_alive "$RUN/mysqld.pid" mariadbd); then
        log "mariadbd already running (pid $pid)"
    else
        rm -f "$RUN/mysqld.pid"
        setsid mariadbd --defaults-file="$ETC/my.cnf" </dev/null >>"$LOG/mysqld.log" 2>&1 &
        wait_for mariadbd mariadb-admin --socket="$RUN/mysqld.sock" ping
        wait_for "mariadbd pid file" test -s "$RUN/mysqld.pid"
        record mariadbd "$RUN/mysqld.pid"
        log "mariadbd started (pid $(cat "$RUN/mysqld.pid"))"
    fi
    mariadb --socket="$RUN/mysqld.sock" -u root <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE OR REPLACE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-local-ci';
CREATE OR REPLACE USER 'slurm'@'localhost' IDENTIFIED BY 'slurm-local-ci';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
    cat > "$ETC/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm-local-ci
StorageLoc=slurm_acct_db
EOF
    chmod 0600 "$ETC/slurmdbd.conf"
    install_conf "$ETC/slurmdbd.conf" /etc/slurm/slurmdbd.conf 0600
    if pid=$(pid_alive "$RUN/slurmdbd.pid" slurmdbd); then
        log "slurmdbd already running (pid $pid)"
    else
        rm -f "$RUN/slurmdbd.pid"
        /usr/sbin/slurmdbd
        wait_for "slurmdbd pid file" test -s "$RUN/slurmdbd.pid"
        record slurmdbd "$RUN/slurmdbd.pid"
        wait_for "slurmdbd to answer" sacctmgr -n show cluster
        log "slurmdbd started (pid $(cat "$RUN/slurmdbd.pid"))"
    fi
fi

# ---------------------------------------------------------------- 6. slurmctld + slurmd
stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM a daemon we started, wait up to 20 s, then SIGKILL it
    local p i
    p=$(pid_alive "$2" "$1") || return 0
    kill -TERM "$p" 2>/dev/null || true
    for i in $(seq 1 100); do [ -d "/proc/$p" ] || break; sleep 0.2; done
    if [ -d "/proc/$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$1" ]; then
        kill -KILL "$p" 2>/dev/null || true
    fi
    rm -f "$2"
}
if [ "$CONF_CHANGED" = 1 ]; then
    # node definitions (Gres, RealMemory) are only read at daemon start in Slurm 22.05
    for name in slurmd slurmctld; do
        if grep -qs "^$name " "$STARTED" && pid=$(pid_alive "$RUN/$name.pid" "$name"); then
            log "config changed: restarting $name (pid $pid)"
            stop_pid "$name" "$RUN/$name.pid"
        fi
    done
fi
if pid=$(pid_alive "$RUN/slurmctld.pid" slurmctld); then
    log "slurmctld already running (pid $pid), re-reading config"
    scontrol reconfigure || true
else
    rm -f "$RUN/slurmctld.pid"
    /usr/sbin/slurmctld
    wait_for "slurmctld pid file" test -s "$RUN/slurmctld.pid"
    record slurmctld "$RUN/slurmctld.pid"
    wait_for "slurmctld to answer" scontrol ping
    log "slurmctld started (pid $(cat "$RUN/slurmctld.pid"))"
fi
if pid=$(pid_alive "$RUN/slurmd.pid" slurmd); then
    log "slurmd already running (pid $pid)"
else
    rm -f "$RUN/slurmd.pid"
    /usr/sbin/slurmd -N "$NODE"
    wait_for "slurmd pid file" test -s "$RUN/slurmd.pid"
    record slurmd "$RUN/slurmd.pid"
    log "slurmd started (pid $(cat "$RUN/slurmd.pid"))"
fi

# ---------------------------------------------------------------- 7. wait for the node
node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1; }
end=$(( $(date +%s) + TIMEOUT ))
while :; do
    st=$(node_state)
    case "$st" in
        idle|mixed|allocated) break ;;
        *drain*|down*|*fail*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
    esac
    [ "$(date +%s)" -lt "$end" ] || die "node $NODE not ready (state '$st'), see $LOG/slurmd.log"
    sleep 0.5
done
log "node $NODE is $st"

if [ "$WITH_DBD" = 1 ]; then
    # slurmctld registers the cluster itself; wait for it so that sacct/sacctmgr work
    wait_for "cluster registration in slurmdbd" sh -c "sacctmgr -n -P show cluster format=cluster | grep -qx localci"
fi

# ---------------------------------------------------------------- 8. smoke test
out=$(timeout 60 srun -N1 -n1 -t 1 hostname) || die "srun smoke test failed"
log "srun smoke test ok (ran on '$out')"

cat <<EOF
[start-local-slurm] single-node Slurm is up: partition '$PARTITION', node '$NODE' ($topo RealMemory=$MEM_MB${gres_node}), accounting: $([ "$WITH_DBD" = 1 ] && echo "slurmdbd+mariadb (sacct works)" || echo "none (sacct disabled; use squeue)")
[start-local-slurm] config: /etc/slurm/slurm.conf (copy of $ETC/slurm.conf), logs: $LOG
[start-local-slurm] daemons started by this script: $(awk '{printf "%s ", $1}' "$STARTED")
[start-local-slurm] stop with: SLURM_LOCAL_BASE=$BASE $(dirname "$(readlink -f "$0")")/stop-local-slurm.sh
EOF
