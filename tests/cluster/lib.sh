# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this file
# Common settings for tests/cluster/{build,up,down,smoke}. Sourced, not executed.
TESTBED_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$TESTBED_DIR/versions.env"

CACHE_ROOT="${EMPACTS_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/empacts-testbed}"
CACHE_DIR="$CACHE_ROOT/${K8S_VERSION}-kwok${KWOK_VERSION}-helm${HELM_VERSION}"
BIN_DIR="$CACHE_DIR/bin"
# Prometheus and the Prometheus Operator CRDs have cache dirs of their own, keyed by their own versions, so a
# change of one does not invalidate the (much longer) Kubernetes build.
PROM_BIN_DIR="$CACHE_ROOT/prometheus-$PROMETHEUS_VERSION/bin"
PROM_CRD_DIR="$CACHE_ROOT/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION/crds"
PROM_CRDS=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml
  monitoring.coreos.com_podmonitors.yaml)

STATE="${EMPACTS_TESTBED_STATE:-/tmp/empacts-testbed}"
API_PORT="${EMPACTS_TESTBED_API_PORT:-16443}"
ETCD_CLIENT_PORT="${EMPACTS_TESTBED_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${EMPACTS_TESTBED_ETCD_PEER_PORT:-12380}"
# health/metrics ports of kube-controller-manager / kube-scheduler on 127.0.0.1; 0 (default) = not served
KCM_PORT="${EMPACTS_TESTBED_KCM_PORT:-0}"
SCHED_PORT="${EMPACTS_TESTBED_SCHEDULER_PORT:-0}"
KWOK_NODES="${EMPACTS_TESTBED_NODES:-3}"
# Sized for a fleet (the benchmarks run up to 10,000 apps of 1-2 pods each): Services come from a /16 (65,534
# cluster IPs; a /24 held ~250 apps), and each fake node takes this many pods (3 x 4000 = 12,000 by default;
# kwok simulates them, so the number costs nothing until pods exist).
PODS_PER_NODE="${EMPACTS_TESTBED_PODS_PER_NODE:-4000}"
SERVICE_CIDR="${EMPACTS_TESTBED_SERVICE_CIDR:-10.0.0.0/16}"

log() { printf '[testbed %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
