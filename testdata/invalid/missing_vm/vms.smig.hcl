variable "psk" {
  type      = string
  sensitive = true
}

vm "web" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = "192.168.10.11"
}

secure_link "web_db" {
  between = [vm.web, vm.dbb]
  ipsec {
    proposals = ["aes256-sha256-modp2048"]
    psk       = var.psk
  }
}

secure_link "web_cache" {
  between = [vm.web, "cache"]
  ipsec {
    proposals = ["aes256-sha256-modp2048"]
    psk       = var.psk
  }
}
