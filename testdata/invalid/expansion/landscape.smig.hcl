environment "dc" {
  trusted = true
  host "hv1" {
    libvirt = "qemu+tls://10.77.0.11/system"
    address = "10.77.0.11"
    network = "netns:dc-hv1"
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
