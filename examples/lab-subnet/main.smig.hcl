# The lab of lab/README.md with a whole-subnet move: batch1 and batch2 (subnet batch) both go
# to cloud.c1, db stays on dc.hv2. smig adds a subnet tunnel from the dc routing core to c1
# (a VXLAN carried by an IPsec SA with a fresh key per tunnel), moves both guests, waits until
# the routing core learns a route for 192.168.20.0/24 (route.check), then removes the tunnel.
# Needs SMIG_LAB=1 and the key in SMIG_VAR_web_db_psk, like examples/lab.

variable "web_db_psk" {
  type      = string
  sensitive = true
}

environment "dc" {
  trusted = true
  host "hv1" {
    libvirt = "qemu+tls://10.77.0.11/system"
    address = "10.77.0.11"          # underlay address: IKE and tunnel endpoint
    network = "netns:dc-hv1"        # where smig reaches this host's network stack
  }
  host "hv2" {
    libvirt = "qemu+tls://10.77.0.12/system"
    address = "10.77.0.12"
    network = "netns:dc-hv2"
  }
  routing_core {
    network = "netns:dc-core"
  }
}

environment "cloud" {
  trusted = false
  host "c1" {
    libvirt = "qemu+tls://10.78.0.21/system"
    address = "10.78.0.21"
    network = "netns:cloud-c1"
  }
}

subnet "app" {
  cidr = "192.168.10.0/24"
}

subnet "batch" {
  cidr = "192.168.20.0/24"
}

vm "batch1" {
  host    = environment.cloud.host.c1   # discovered on dc.hv1
  subnet  = subnet.batch
  address = "192.168.20.11"
}

vm "batch2" {
  host    = environment.cloud.host.c1   # discovered on dc.hv2
  subnet  = subnet.batch
  address = "192.168.20.12"
}

vm "web" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = "192.168.10.11"
}

vm "db" {
  host    = environment.dc.host.hv2
  subnet  = subnet.app
  address = "192.168.10.12"
  migration {
    mode            = "live"            # or "cold"
    max_downtime_ms = 300
  }
}

secure_link "web_db" {
  between = [vm.web, vm.db]
  ipsec {
    proposals = ["aes256-sha256-modp2048"]
    psk       = var.web_db_psk
  }
}

policy {
  tls_ports              = [443, 636, 5432] # non-managed connections on these count as secured
  route_check_timeout_s  = 60               # how long route.check waits for the learned route
  route_check_interval_s = 1
}
