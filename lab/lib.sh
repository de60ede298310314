# Shared definitions of the smig lab. Sourced by the lab commands; not run directly.
# Every name and address of the lab is defined here once.

set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Runtime state: pids, logs, sockets, certificates, guest consoles. Removed by `lab/down`.
LAB_RUN=${SMIG_LAB_RUN:-/run/smig-lab}
# Build cache (guest kernel and initramfs). Kept by `lab/down`; `lab/down --purge` removes it.
LAB_CACHE=${SMIG_LAB_CACHE:-/var/cache/smig-lab}

# Hypervisor hosts: name, site, network namespace, underlay address, host UUID.
LAB_HOSTS=(hv1 hv2 c1)
declare -A HOST_SITE=([hv1]=dc [hv2]=dc [c1]=cloud)
declare -A HOST_NS=([hv1]=dc-hv1 [hv2]=dc-hv2 [c1]=cloud-c1)
declare -A HOST_ADDR=([hv1]=10.77.0.11 [hv2]=10.77.0.12 [c1]=10.78.0.21)
declare -A HOST_UUID=([hv1]=5a1b0000-0000-4000-8000-000000000011 [hv2]=5a1b0000-0000-4000-8000-000000000012 [c1]=5a1b0000-0000-4000-8000-000000000021)
# Overlay endpoint address each host owns (on lo), for IPsec tunnels between hosts.
declare -A HOST_OVERLAY=([hv1]=172.31.0.11 [hv2]=172.31.0.12 [c1]=172.31.0.21 [core]=172.31.0.1)
# The routing core runs a charon too (for a subnet tunnel secured by IPsec), but no libvirtd.
CHARON_HOSTS=(hv1 hv2 c1 core)
HOST_SITE[core]=dc
HOST_NS[core]=dc-core
HOST_ADDR[core]=10.77.0.1

CORE_NS=dc-core
WAN_NS=lab-wan
# The dc underlay (one switch: a bridge in the routing core's namespace).
DC_UNDERLAY=10.77.0.0/24
DC_GW=10.77.0.1
CLOUD_UNDERLAY=10.78.0.0/24
CLOUD_GW=10.78.0.1
# Link between the routing core and the WAN.
CORE_WAN_ADDR=10.77.254.2
WAN_CORE_ADDR=10.77.254.1
# The root namespace (where smig and virsh run) sits on the dc underlay, like an operator's machine.
ROOT_ADDR=10.77.0.100
ROOT_LINK=smiglab0

# VM subnets: one bridge per subnet on every host (same name everywhere), VXLAN between the dc hosts
# and the routing core over the dc underlay. The routing core is each subnet's gateway (.1).
LAB_SUBNETS=(app batch)
declare -A SUBNET_CIDR=([app]=192.168.10.0/24 [batch]=192.168.20.0/24)
declare -A SUBNET_GW=([app]=192.168.10.1 [batch]=192.168.20.1)
declare -A SUBNET_BRIDGE=([app]=br-app [batch]=br-batch)
declare -A SUBNET_VNI=([app]=10 [batch]=20)
# Underlay MTU inside the dc, so the subnets keep 1500 through VXLAN.
DC_MTU=1600

# Guests: name, host, subnet, address, MAC, peers it probes.
LAB_GUESTS=(web db batch1 batch2)
declare -A GUEST_HOST=([web]=hv1 [db]=hv2 [batch1]=hv1 [batch2]=hv2)
declare -A GUEST_SUBNET=([web]=app [db]=app [batch1]=batch [batch2]=batch)
declare -A GUEST_ADDR=([web]=192.168.10.11 [db]=192.168.10.12 [batch1]=192.168.20.11 [batch2]=192.168.20.12)
declare -A GUEST_MAC=([web]=52:54:00:0a:00:0b [db]=52:54:00:0a:00:0c [batch1]=52:54:00:14:00:0b [batch2]=52:54:00:14:00:0c)
declare -A GUEST_PEERS=([web]=192.168.10.12,192.168.10.1 [db]=192.168.10.11,192.168.10.1 [batch1]=192.168.20.12,192.168.20.1 [batch2]=192.168.20.11,192.168.20.1)
# web keeps one long-lived plaintext TCP connection to db's echo service on this port.
ECHO_PORT=7
HTTP_PORT=80

PKI_DIR=$LAB_RUN/pki
CLIENT_PKI=$PKI_DIR/client
CONSOLE_DIR=$LAB_RUN/console

log() { printf '[lab] %s\n' "$*" >&2; }
die() { printf '[lab] error: %s\n' "$*" >&2; exit 1; }

host_dir() { echo "$LAB_RUN/hosts/$1"; }
host_uri() { echo "qemu+tls://${HOST_ADDR[$1]}/system?pkipath=$CLIENT_PKI"; }
vici_socket() { echo "$(host_dir "$1")/charon.vici"; }
virsh_host() { local h=$1; shift; virsh -q -c "$(host_uri "$h")" "$@"; }
swanctl_host() {
	local h=$1
	shift
	STRONGSWAN_CONF="$(host_dir "$h")/strongswan.conf" swanctl "$@" --uri "unix://$(vici_socket "$h")"
}

# The pid of the process holding a host's namespaces (mount, UTS, network), if it runs.
host_pid() { pid_of "$(host_dir "$1")/holder.pid"; }
# The pid in a pid file, if that process runs.
pid_of() {
	local f=$1
	[[ -s $f ]] || return 1
	local pid
	pid=$(<"$f")
	kill -0 "$pid" 2>/dev/null || return 1
	echo "$pid"
}

# Run a command inside a host's namespaces (mount, UTS, network), as that host sees itself.
host_exec() {
	local h=$1 pid
	shift
	pid=$(host_pid "$h") || die "host $h is not running"
	nsenter -t "$pid" -m -u -n -- "$@"
}

netns_exists() { [[ -e /run/netns/$1 ]]; }

# Wait until a command succeeds, polling; fail with a message after a timeout (seconds).
wait_for() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
		sleep 0.2
	done
}

need_root() { [[ $(id -u) -eq 0 ]] || die "the lab needs root"; }
