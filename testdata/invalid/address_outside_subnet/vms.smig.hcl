vm "web" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = "192.168.11.11"
}
