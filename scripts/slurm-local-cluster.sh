#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, from Debian's packages (issue 33): munge, MariaDB,
# slurmdbd (so that `sacct` works: the SLURM executor plugin polls job states with it), slurmctld and slurmd,
# one partition sized to the machine (`slurmd -C`: its CPUs and memory).
#
#   scripts/slurm-local-cluster.sh start    install what is missing (apt), write the configuration, start the daemons
#   scripts/slurm-local-cluster.sh status   which daemons run; the partition (exit 0 when all run, 3 otherwise)
#   scripts/slurm-local-cluster.sh stop     cancel the cluster's jobs, stop the daemons this script started
#
# Needs root and, where the packages are missing, apt-get; otherwise one line and exit 2. start and stop are
# idempotent. The start order and the facts it relies on (no systemd: every daemon started by hand; /run/munge
# created; slurmdbd.conf owned by slurm, mode 600; the cluster registered with sacctmgr before slurmctld;
# proctrack/linuxproc and task/none, so no cgroup configuration) are measured in
# /work/shared/notes/feasibility.md. It writes /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf and refuses
# to overwrite files it did not write (a machine with its own SLURM).
set -euo pipefail

PROG=slurm-local-cluster
CLUSTER=copa-local                 # ClusterName in slurm.conf and in the accounting database
PARTITION=copa                     # the only partition, the default one
CONF_DIR=/etc/slurm                # where Debian's slurm-wlm reads slurm.conf
SLURM_CONF_FILE=$CONF_DIR/slurm.conf
DBD_CONF_FILE=$CONF_DIR/slurmdbd.conf
MARKER="# Written by copa-bench scripts/slurm-local-cluster.sh; it rewrites this file on start."
RUN_DIR=/run/slurm                 # pid files, and which of MariaDB / munged this script started
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm
PACKAGES=(slurm-wlm munge mariadb-server slurmdbd)

die() { echo "$PROG: $*" >&2; exit 2; }
say() { echo "$PROG: $*"; }

usage() { die "usage: $0 start|stop|status"; }

# --------------------------------------------------------------------------------------------------------------
# helpers

pid_alive() {  # pid_alive PIDFILE: the pid file names a live process
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for WHAT LOG PIDFILE COMMAND...: poll COMMAND while the daemon lives (no fixed limit)
    local what=$1 log=$2 pidfile=$3
    shift 3
    local i=0
    until "$@" >/dev/null 2>&1; do
        if [ -n "$pidfile" ] && [ $i -ge 10 ] && ! pid_alive "$pidfile"; then
            die "$what did not start: $(tail -n 1 "$log" 2>/dev/null || echo "no log at $log")"
        fi
        i=$((i + 1))
        if [ $i -ge 600 ]; then  # 5 minutes of a live daemon that never answers: something else is wrong
            die "$what runs but does not answer after 5 minutes: see $log"
        fi
        sleep 0.5
    done
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: SIGTERM, then wait until it exits
    local name=$1 pidfile=$2
    if pid_alive "$pidfile"; then
        local pid
        pid=$(cat "$pidfile")
        kill -TERM "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
        say "stopped $name"
    fi
    rm -f "$pidfile"
}

our_config() {  # the configuration files are this script's (or absent)
    for file in "$SLURM_CONF_FILE" "$DBD_CONF_FILE"; do
        if [ -e "$file" ] && ! grep -qxF "$MARKER" "$file"; then
            return 1
        fi
    done
}

mariadb_up() { mariadb-admin --silent ping >/dev/null 2>&1; }
munge_up() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# --------------------------------------------------------------------------------------------------------------
# start

install_packages() {
    local missing=()
    for cmd in slurmctld slurmd slurmdbd sacct munged mariadbd; do
        command -v "$cmd" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "no apt-get to install ${PACKAGES[*]} (missing: ${missing[*]})"
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    # the packages' own start of their daemons is refused where there is no init system: this script starts them
    apt-get install -y -q "${PACKAGES[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${PACKAGES[@]}" >/dev/null 2>&1; } \
        || die "apt-get could not install ${PACKAGES[*]}"
}

write_slurm_conf() {
    # The node as slurmd detects it (CPUs, sockets, cores, threads, RealMemory in MB), minus its UpTime line.
    local node
    node=$(slurmd -C | grep '^NodeName=') || die "slurmd -C could not describe this machine"
    local host=${node#NodeName=}
    host=${host%% *}
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
$MARKER
# A single-node cluster for testing the workflow's SLURM profile (profiles/slurm): see README.md,
# "Running on a cluster".
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups: processes tracked by their parent pids, no task affinity (feasibility.md).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# CPUs and memory are consumable: a job gets the CPUs (--cpus-per-task) and memory (--mem) it asks for.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Accounting through slurmdbd, so that sacct lists the jobs; the memory gatherer samples each job's RSS
# (sacct MaxRSS) and kills a job that exceeds its --mem, as production clusters do.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=5
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/none
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    install -m 0644 "$tmp" "$SLURM_CONF_FILE"
    rm -f "$tmp"
}

write_slurmdbd_conf() {
    # The MariaDB password of the slurm user: kept from an earlier start, else a new random one.
    local password=""
    [ -f "$DBD_CONF_FILE" ] && password=$(sed -n 's/^StoragePass=//p' "$DBD_CONF_FILE")
    [ -n "$password" ] || password=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$password
StorageLoc=slurm_acct_db
EOF
    install -o slurm -g slurm -m 0600 "$tmp" "$DBD_CONF_FILE"  # slurmdbd refuses other owners or modes
    rm -f "$tmp"
    echo "$password"
}

start_munge() {
    install -d -o munge -g munge -m 0755 /run/munge  # not created by the package without systemd
    if ! munge_up; then
        [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
        runuser -u munge -- munged
        touch "$RUN_DIR/started-munged"
        wait_for munged /var/log/munge/munged.log /run/munge/munged.pid munge_up
        say "started munged"
    fi
}

start_mariadb() {
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    if ! mariadb_up; then
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
        setsid mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
            </dev/null >>"$LOG_DIR/mariadb.log" 2>&1 &
        touch "$RUN_DIR/started-mariadb"
        wait_for MariaDB "$LOG_DIR/mariadb.log" "" mariadb_up
        say "started MariaDB"
    fi
}

start_slurmdbd() {
    local password=$1
    # The accounting database's user (root reaches MariaDB through its socket); the password follows slurmdbd.conf.
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$password';
                ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$password';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    if ! pid_alive "$RUN_DIR/slurmdbd.pid"; then
        slurmdbd
        wait_for slurmdbd "$LOG_DIR/slurmdbd.log" "$RUN_DIR/slurmdbd.pid" sacctmgr -n show cluster
        say "started slurmdbd"
    fi
    # the cluster must be known to the accounting before slurmctld registers (feasibility.md)
    if [ -z "$(sacctmgr -n -P show cluster "$CLUSTER" format=cluster)" ]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

node_ready() { sinfo -h -N -p "$PARTITION" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }

start() {
    [ "$(id -u)" = 0 ] || die "needs root (it installs packages and starts daemons as their users)"
    install_packages
    our_config || die "$CONF_DIR has a SLURM configuration this script did not write: use that cluster"
    install -d -o slurm -g slurm -m 0755 "$RUN_DIR" "$LOG_DIR" "$STATE_DIR" "$STATE_DIR/slurmctld"
    install -d -m 0755 "$STATE_DIR/slurmd"
    write_slurm_conf
    local password
    password=$(write_slurmdbd_conf)
    start_munge
    start_mariadb
    start_slurmdbd "$password"
    if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
        slurmctld
        wait_for slurmctld "$LOG_DIR/slurmctld.log" "$RUN_DIR/slurmctld.pid" scontrol ping
        say "started slurmctld"
    else
        scontrol reconfigure >/dev/null  # a running controller reads the rewritten slurm.conf
    fi
    if ! pid_alive "$RUN_DIR/slurmd.pid"; then
        slurmd
        say "started slurmd"
    fi
    wait_for "the node of partition $PARTITION" "$LOG_DIR/slurmd.log" "$RUN_DIR/slurmd.pid" node_ready
    if sinfo -h -N -o %T | grep -qE 'drain|down'; then
        scontrol update NodeName=ALL State=RESUME >/dev/null 2>&1 || true
    fi
    say "cluster $CLUSTER up: $(sinfo -h -o 'partition %P, %D node, %c CPUs, %m MB, %T')"
}

# --------------------------------------------------------------------------------------------------------------
# stop, status

stop() {
    [ "$(id -u)" = 0 ] || die "needs root (it stops daemons started as root)"
    our_config || die "$CONF_DIR has a SLURM configuration this script did not write: not stopping that cluster"
    if pid_alive "$RUN_DIR/slurmctld.pid"; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            scancel $jobs
            while [ -n "$(squeue -h -o %i 2>/dev/null)" ]; do sleep 0.5; done
            say "cancelled jobs: $(echo $jobs)"
        fi
    fi
    stop_pidfile slurmd "$RUN_DIR/slurmd.pid"
    stop_pidfile slurmctld "$RUN_DIR/slurmctld.pid"
    stop_pidfile slurmdbd "$RUN_DIR/slurmdbd.pid"
    if [ -e "$RUN_DIR/started-mariadb" ]; then
        if mariadb_up; then
            mariadb-admin shutdown
            say "stopped MariaDB"
        fi
        rm -f "$RUN_DIR/started-mariadb"
    fi
    if [ -e "$RUN_DIR/started-munged" ]; then
        stop_pidfile munged /run/munge/munged.pid
        rm -f "$RUN_DIR/started-munged"
    fi
}

status() {
    local all=0
    munge_up && say "munged: running" || { say "munged: not running"; all=3; }
    mariadb_up && say "MariaDB: running" || { say "MariaDB: not running"; all=3; }
    local daemon
    for daemon in slurmdbd slurmctld slurmd; do
        pid_alive "$RUN_DIR/$daemon.pid" && say "$daemon: running" || { say "$daemon: not running"; all=3; }
    done
    if [ $all = 0 ]; then
        say "partition: $(sinfo -h -o '%P, %D node, %c CPUs, %m MB, %T' 2>&1)"
    fi
    return $all
}

[ $# -eq 1 ] || usage
PATH=$PATH:/usr/sbin:/sbin
case $1 in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
