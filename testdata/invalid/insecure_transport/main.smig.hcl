environment "dc" {
  trusted = true
  host "hv1" {
    libvirt = "qemu+tcp://10.77.0.11/system" # trusted side: allowed
    address = "10.77.0.11"
    network = "netns:dc-hv1"
  }
}

environment "cloud" {
  trusted = false
  host "c1" {
    libvirt = "qemu+tcp://10.78.0.21/system"
    address = "10.78.0.21"
    network = "netns:cloud-c1"
  }
  host "c2" {
    libvirt = "qemu+ssh://root@10.78.0.22/system"
    address = "10.78.0.22"
    network = "netns:cloud-c2"
  }
}
