#!/usr/bin/env bash
# stop-local-slurm.sh - stop exactly the daemons that tests/slurm/start-local-slurm.sh started.
#
# Reads $SLURM_LOCAL_BASE/run/started-by-us ("name pidfile" lines), cancels any
# jobs still in the queue (so no slurmstepd/job processes outlive slurmd), then
# sends SIGTERM to each recorded pid (checking that the pid still belongs to
# the expected program), waits, and only escalates to SIGKILL for that same pid.
# Never uses pkill/killall. Daemons that were already running before
# start-local-slurm.sh (not recorded) are left alone.
#
#   SLURM_LOCAL_BASE=/tmp/local-slurm   must match the start script
#   SLURM_LOCAL_PURGE=0                1: also delete state, logs and the mariadb datadir

set -uo pipefail
BASE=${SLURM_LOCAL_BASE:-/tmp/local-slurm}
RUN=$BASE/run
STARTED=$RUN/started-by-us
t0=${EPOCHREALTIME/./}
log() { local us=$(( ${EPOCHREALTIME/./} - t0 )); printf '[stop-local-slurm %3d.%01ds] %s\n' $((us/1000000)) $((us/100000%10)) "$*"; }

[ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 1; }
purge() {
    if [ "${SLURM_LOCAL_PURGE:-0}" = 1 ]; then
        rm -rf "$BASE/state" "$BASE/log" "$BASE/mysql" "$BASE/run" "$BASE/dev"
        log "purged state, logs, fake devices and database under $BASE"
    fi
}
if [ ! -s "$STARTED" ]; then
    log "nothing recorded in $STARTED - nothing to stop"
    purge; exit 0
fi

pid_of() {  # pid_of PIDFILE COMM -> pid if it is alive and is COMM
    local p
    [ -s "$1" ] || return 1
    p=$(tr -dc '0-9' < "$1")
    [ -n "$p" ] && [ -r "/proc/$p/comm" ] && [ "$(cat "/proc/$p/comm")" = "$2" ] || return 1
    echo "$p"
}
stop_one() {  # stop_one NAME PIDFILE
    local name=$1 f=$2 p i
    if ! p=$(pid_of "$f" "$name"); then
        log "$name: not running (pid file $f)"; return 0
    fi
    kill -TERM "$p" 2>/dev/null
    for i in $(seq 1 100); do          # up to 20 s
        [ -d "/proc/$p" ] || break
        sleep 0.2
    done
    if [ -d "/proc/$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$name" ]; then
        log "$name (pid $p) ignored SIGTERM for 20 s, sending SIGKILL"
        kill -KILL "$p" 2>/dev/null
    fi
    log "$name (pid $p) stopped"
}

# 1. drain jobs while slurmctld/slurmd are still up
if grep -q '^slurmctld ' "$STARTED" && pid_of "$RUN/slurmctld.pid" slurmctld >/dev/null; then
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs still queued/running: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for i in $(seq 1 60); do       # up to 30 s
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

# 2. stop daemons in reverse dependency order, only those we recorded
for name in slurmd slurmctld slurmdbd mariadbd munged; do
    f=$(awk -v n="$name" '$1==n {print $2}' "$STARTED" | tail -1)
    [ -n "$f" ] && stop_one "$name" "$f"
done
: > "$STARTED"

purge
log "done"
