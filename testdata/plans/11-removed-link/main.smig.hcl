environment "dc" {
  trusted = true
  host "hv1" {
    libvirt = "qemu+tls://10.77.0.11/system"
    address = "10.77.0.11"
    network = "netns:dc-hv1"
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

vm "db" {
  host    = environment.cloud.host.c1
  subnet  = subnet.app
  address = "192.168.10.12"
}

vm "web" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = "192.168.10.11"
}

secure_link "web_db" {
  between = [vm.web, vm.db]
  ipsec {
    proposals = ["aes256-sha256-modp2048"]
    psk       = "fixture-psk-web_db"
  }
}

policy {
  tls_ports = [443, 636, 5432]
}
