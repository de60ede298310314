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
  host "hv3" {
    libvirt = "qemu+tls://10.77.0.13/system"
    address = "10.77.0.13"
    network = "netns:dc-hv3"
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
  host "c2" {
    libvirt = "qemu+tls://10.78.0.22/system"
    address = "10.78.0.22"
    network = "netns:cloud-c2"
  }
}

subnet "app" {
  cidr = "192.168.10.0/24"
}

subnet "data" {
  cidr = "192.168.20.0/24"
}

vm "db1" {
  host    = environment.cloud.host.c1
  subnet  = subnet.data
  address = "192.168.20.11"
}

vm "db2" {
  host    = environment.cloud.host.c1
  subnet  = subnet.data
  address = "192.168.20.12"
}

vm "web" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = "192.168.10.11"
}

secure_link "web_db1" {
  between = [vm.web, vm.db1]
  ipsec {
    proposals = ["aes256-sha256-modp2048"]
    psk       = "fixture-psk-web_db1"
  }
}

secure_link "web_db2" {
  between = [vm.web, vm.db2]
  ipsec {
    proposals = ["aes256-sha256-modp2048"]
    psk       = "fixture-psk-web_db2"
  }
}

policy {
  tls_ports = [443, 636, 5432]
}
