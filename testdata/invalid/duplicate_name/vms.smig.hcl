vm "web" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = "192.168.10.11"
}

vm "web" {
  host    = environment.cloud.host.c1
  subnet  = subnet.app
  address = "192.168.10.12"
}
