vm "web" {
  host    = environment.cloud.host.c2
  subnet  = subnet.app
  address = "192.168.10.11"
}

vm "db" {
  host    = "dc.hv9"
  subnet  = subnet.app
  address = "192.168.10.12"
}
