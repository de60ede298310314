# SPEC.md's reference landscape on the lab of lab/README.md: the same hosts, URIs, addresses
# and namespaces, plus the lab's second subnet (batch1, batch2 stay where they are).
# lab/demo runs it: `smig plan examples/lab`, then `smig apply --auto-approve examples/lab`
# moves db from dc.hv2 to cloud.c1 behind IPsec. The real drivers need SMIG_LAB=1 (the lab's
# VICI sockets and overlay addresses) and the key in SMIG_VAR_web_db_psk.

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
  host    = environment.dc.host.hv1
  subnet  = subnet.batch
  address = "192.168.20.11"
}

vm "batch2" {
  host    = environment.dc.host.hv2
  subnet  = subnet.batch
  address = "192.168.20.12"
}

vm "web" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = "192.168.10.11"
}

vm "db" {
  host    = environment.cloud.host.c1   # discovered on dc.hv2: smig plans a secure migration
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
  tls_ports = [443, 636, 5432]          # non-managed connections on these count as secured
}
