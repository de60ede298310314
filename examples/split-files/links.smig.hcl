secure_link "app" {
  between = [vm.frontend, vm.backend, vm.ldap]
  ipsec {
    proposals = ["aes256-sha256-modp2048"]
    cert      = "/etc/smig/pki/app.pem"
    key       = "/etc/smig/pki/app.key"
    ca        = "/etc/smig/pki/ca.pem"
  }
}

policy {
  tls_ports = [636]
}
