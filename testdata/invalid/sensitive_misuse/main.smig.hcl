variable "secret" {
  type      = string
  sensitive = true
  default   = "canary-sensitive-91aa"
}

environment "dc" {
  trusted = true
  host "hv1" {
    libvirt = "qemu+tls://10.77.0.11/system"
    address = var.secret
    network = "netns:dc-hv1"
  }
}

locals {
  sum = var.secret + 1
}
