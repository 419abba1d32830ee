#!/usr/bin/env bash
# A one-node SLURM cluster (munge, slurmctld, slurmd) and a PostgreSQL server on this
# machine, on 127.0.0.1 only, for tests/test_cluster.py. Run as root (CI is); idempotent:
# a service already up is left as it is. Installs the Debian packages where missing.
#
#   bash tests/cluster/start_services.sh            # prints the settings the tests read
#
# The services are the machine's, so their settings are too: it writes
# /var/lib/embsvd-cluster/env (root only; EMBSVD_CLUSTER_STATE names another folder) with
# EMBSVD_CLUSTER_PG_URI and the partition, which the tests read (EMBSVD_CLUSTER_ENV), from
# whichever checkout runs them. The database role's password is made once and kept there.
set -euo pipefail
state="${EMBSVD_CLUSTER_STATE:-/var/lib/embsvd-cluster}"
mkdir -p "$state" && chmod 700 "$state"

if [ "$(id -u)" != 0 ]; then
    echo "start_services.sh: run as root (it starts munge, slurmctld, slurmd, postgresql)" >&2
    exit 2
fi

if ! command -v slurmctld >/dev/null || ! command -v pg_ctlcluster >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge postgresql >/dev/null
fi

# --- PostgreSQL: the MLflow server's backend store, a role and a database for it ----------
pg_version="$(ls /usr/lib/postgresql | sort -n | tail -1)"
if ! pg_lsclusters -h | grep -q "^$pg_version main"; then
    pg_createcluster "$pg_version" main >/dev/null
fi
# loopback only
pg_conftool "$pg_version" main remove listen_addresses >/dev/null 2>&1 || true
echo "listen_addresses = '127.0.0.1'" > "/etc/postgresql/$pg_version/main/conf.d/embsvd-loopback.conf"
if ! pg_lsclusters -h | grep -q "^$pg_version main .* online"; then
    pg_ctlcluster "$pg_version" main start
fi
pg_port="$(pg_lsclusters -h | awk -v v="$pg_version" '$1 == v && $2 == "main" {print $3}')"
pg_password_file="$state/pg_password"
[ -s "$pg_password_file" ] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$pg_password_file")
pg_password="$(cat "$pg_password_file")"
runuser -u postgres -- psql -q -p "$pg_port" -v ON_ERROR_STOP=1 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'embsvd') THEN
    CREATE ROLE embsvd LOGIN CREATEDB PASSWORD '$pg_password';
  ELSE
    ALTER ROLE embsvd CREATEDB PASSWORD '$pg_password';
  END IF;
END \$\$;
SQL
if ! runuser -u postgres -- psql -p "$pg_port" -tAc "SELECT 1 FROM pg_database WHERE datname = 'embsvd_ci'" | grep -q 1; then
    runuser -u postgres -- createdb -p "$pg_port" -O embsvd embsvd_ci
fi

# --- munge: SLURM's authentication ---------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
    chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
fi
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
fi
munge -n | unmunge >/dev/null

# --- SLURM: one node, one partition; no cgroups (containers rarely delegate them) ----------
node="$(hostname -s)"
cpus="$(nproc)"
memory_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=embsvd-ci
SlurmctldHost=$node
SlurmctldAddr=127.0.0.1
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=ci Nodes=$node Default=YES MaxTime=60 State=UP
CONF
rm -f /etc/slurm/cgroup.conf  # autodetected; slurm 22.05 has no "disabled"
if ! scontrol ping 2>/dev/null | grep -q UP; then
    slurmctld
fi
if ! pgrep -x slurmd >/dev/null; then
    slurmd
fi
# wait for the node to register and be idle
for _ in $(seq 1 60); do
    if sinfo -h -o %t -p ci 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then break; fi
    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    sleep 1
done
sinfo -h -o "%P %t %c" -p ci

cat > "$state/env" <<ENVFILE
EMBSVD_CLUSTER_PG_URI=postgresql://embsvd:$pg_password@127.0.0.1:$pg_port/embsvd_ci
EMBSVD_CLUSTER_PARTITION=ci
ENVFILE
chmod 600 "$state/env"
echo "cluster up: partition ci on $node ($cpus CPUs), PostgreSQL $pg_version on 127.0.0.1:$pg_port"
