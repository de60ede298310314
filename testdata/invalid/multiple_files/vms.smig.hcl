vm "web" {
  host    = environment.dc.host.hv2
  subnet  = subnet.app
  address = "192.168.10.11"
}
