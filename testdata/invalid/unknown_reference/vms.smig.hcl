vm "web" {
  host    = environment.dc.host.hv1
  subnet  = subnet.ap
  address = "192.168.10.11"
}

vm "db" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = local.db_address
}
