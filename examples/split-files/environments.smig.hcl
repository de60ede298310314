# The landscape can be split over several files of one directory: smig reads every
# *.smig.hcl file, sorted by name, as one configuration.

environment "dc" {
  trusted = true
  host "hv1" {
    libvirt = "qemu+tls://10.77.0.11/system"
    address = "10.77.0.11"
    network = "netns:dc-hv1"
  }
  routing_core {
    network = "netns:dc-core"
  }
}

environment "dr" {
  trusted = false
  host "dr1" {
    libvirt = "qemu+tls://10.79.0.31/system"
    address = "10.79.0.31"
    network = "netns:dr-dr1"
  }
}
