environment "dc" {
  trusted = "yes"
}

policy {
  tls_ports = "443"
  parallelism = true
}
