# A fleet written with count and for_each: 40 web VMs spread over the data centre's hosts,
# the databases named by a map, every web VM linked to every database over IPsec.

variable "web_count" {
  type    = number
  default = 40
  validation {
    condition     = var.web_count >= 1 && var.web_count <= 200
    error_message = "web_count must be between 1 and 200"
  }
}

variable "databases" {
  type = map(number)
  default = {
    orders  = 200
    billing = 201
  }
}

variable "fleet_psk" {
  type      = string
  sensitive = true
}

locals {
  dc_hosts  = ["hv1", "hv2", "hv3"]
  web_base  = 10
  proposals = ["aes256gcm16-prfsha384-ecp384"]
}

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
}

subnet "web" {
  cidr = "192.168.20.0/24"
}

subnet "data" {
  cidr = "192.168.30.0/24"
}

vm "web" {
  count   = var.web_count
  host    = environment.dc.host[element(local.dc_hosts, count.index)]
  subnet  = subnet.web
  address = cidrhost(subnet.web.cidr, local.web_base + count.index)
}

vm "db" {
  for_each = var.databases
  host     = environment.cloud.host.c1
  subnet   = subnet.data
  address  = cidrhost(subnet.data.cidr, each.value)
  domain   = "db-${each.key}"
  migration {
    mode            = "live"
    strategy        = "prestaged"
    max_downtime_ms = 200
    bandwidth_mibps = 500
  }
}

secure_link "web_to_db" {
  for_each = vm.db
  between  = concat([each.value], vm.web)
  ipsec {
    proposals = local.proposals
    psk       = var.fleet_psk
  }
}

policy {
  tls_ports              = [443, 5432]
  route_check_timeout_s  = 120
  route_check_interval_s = 2
  parallelism            = 8
}
